"""The infer_user_links stage: ``user_histories(ds)`` -> ``user_links(ds)`` (L_P per user), written
by token-balanced inference tasks (:mod:`pipelines.runtime.inference_task`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from pipelines.stages.context import (
    INFER_USER_LINKS,
    RunContext,
    StageResult,
    already_done,
    finish,
    require_partition,
    timed,
)
from pipelines.tables.audit import audited
from pipelines.tables.schemas import USER_HISTORIES, USER_LINKS
from pipelines.tables.store import WriteRequest

if TYPE_CHECKING:
    from pipelines.runtime.inference_task import InferenceConfig


def infer_user_links(ctx: RunContext, cfg: InferenceConfig) -> StageResult:
    from pipelines.runtime.inference_task import TaskRecords, inference_input, inference_task

    app_id = ctx.app_id(INFER_USER_LINKS)
    with audited(ctx.store, INFER_USER_LINKS, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = already_done(ctx, record, USER_LINKS.name, app_id)
        if done:
            return done
        require_partition(ctx, USER_HISTORIES.name, "extract-histories")
        histories = ctx.store.read(USER_HISTORIES, partition={"ds": ctx.ds})
        records = ctx.spark.sparkContext.accumulator([], TaskRecords())
        partitions = cfg.partitions or max(1, ctx.spark.sparkContext.defaultParallelism)
        users = inference_input(histories, partitions)
        request = WriteRequest(USER_LINKS, "overwrite", app_id, partition={"ds": ctx.ds},
                               metadata={"model_version": ctx.model_version})
        commit = timed(record, "infer_and_write", lambda: ctx.store.write_mapped(
            users, inference_task(cfg, ctx.ds, records), request))
        tasks = sorted(records.value, key=lambda t: (t.partition, t.attempt))
        record.count("users", sum(t.users for t in tasks))
        record.count("tokens", sum(t.tokens for t in tasks))
        record.metrics["partitions"] = partitions
        record.metrics["devices"] = sorted({t.device for t in tasks})
        record.metrics["gpus_assigned"] = sorted({g for t in tasks for g in t.gpus})
        record.metrics["tasks"] = [asdict(t) for t in tasks[:256]]
        return finish(record, commit)
