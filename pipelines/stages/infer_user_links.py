"""The infer_user_links stage: ``user_histories(ds)`` -> ``user_links(ds)`` (L_P per user), written
by token-balanced inference tasks (:mod:`pipelines.runtime.inference_task`).

Incremental by default: when ``user_links`` of the previous day holds this model version's rows,
only the users whose history (``item_ids``, ``ts``) differs from the previous day's are encoded;
the others' rows are copied.  ``full=True`` encodes everyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.stages.context import (
    EXTRACT_HISTORIES,
    INFER_USER_LINKS,
    RunContext,
    StageResult,
    already_done,
    finish,
    require_partition,
    timed,
)
from pipelines.stages.incremental import RunMode, previous_ds, previous_run, unchanged_histories
from pipelines.tables.audit import AuditRecord, audited
from pipelines.tables.schemas import USER_HISTORIES, USER_LINKS
from pipelines.tables.store import CommitResult, WriteRequest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from pipelines.runtime.inference_task import InferenceConfig


def infer_mode(ctx: RunContext, full: bool) -> RunMode:
    """Incremental when the previous day has histories and links of this model version."""
    prev = previous_ds(ctx.ds)
    if full:
        return RunMode.full(prev, "a full run was asked for (--full)")
    row, why_not = previous_run(ctx.store, INFER_USER_LINKS, prev, upstream=[EXTRACT_HISTORIES],
                                tables=[USER_HISTORIES.name, USER_LINKS.name])
    if row is None:
        return RunMode.full(prev, why_not)
    if ctx.store.partition_rows(USER_LINKS, {"ds": prev}) == 0:
        return RunMode.full(prev, f"user_links has no rows for the previous day {prev}")
    if ctx.store.partition_rows(USER_HISTORIES, {"ds": prev}) == 0:
        return RunMode.full(prev, f"user_histories has no rows for the previous day {prev}")
    versions = _link_versions(ctx, prev)
    if versions != [ctx.model_version]:
        return RunMode.full(prev, f"user_links of {prev} holds model_version {versions}, this run "
                                  f"{ctx.model_version}")
    return RunMode(True, f"user_links of {prev} holds this model version's rows", prev)


def _link_versions(ctx: RunContext, ds: str) -> list[str]:
    bounds = ctx.store.column_bounds(USER_LINKS, "model_version", {"ds": ds})
    if bounds is not None and bounds[0] == bounds[1]:
        return [str(bounds[0])]
    links = ctx.store.read(USER_LINKS, partition={"ds": ds})
    return sorted(r.model_version for r in links.select("model_version").distinct().collect())


def _split_users(ctx: RunContext, histories: DataFrame, prev: str) -> tuple[DataFrame, DataFrame]:
    """(users to encode: rows of ``histories``; rows of the previous day's ``user_links`` to copy,
    as rows of ``ds``)."""
    from pyspark.sql import functions as F

    usable = histories.where(F.col("n") > 0)
    same = unchanged_histories(usable, ctx.store.read(USER_HISTORIES, partition={"ds": prev}), compare_seen=False)
    reused = (ctx.store.read(USER_LINKS, partition={"ds": prev}).join(same, "user_id", "left_semi")
              .withColumn("ds", F.lit(ctx.ds)).select(*USER_LINKS.schema.names))
    return usable.join(reused.select("user_id"), "user_id", "left_anti"), reused


def _encode_and_write(ctx: RunContext, cfg: InferenceConfig, record: AuditRecord, histories: DataFrame,
                      mode: RunMode, request: WriteRequest) -> tuple[CommitResult, list[dict[str, object]]]:
    """Encode (and, incremental, copy) and commit; the inference tasks' records."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from pipelines.runtime.inference_task import TaskRecords, inference_input, inference_task

    records = ctx.spark.sparkContext.accumulator([], TaskRecords())
    partitions = cfg.partitions or max(1, ctx.spark.sparkContext.defaultParallelism)
    record.metrics["partitions"] = partitions
    if not mode.incremental:
        # each task writes its L_P straight to its files: the rows never pass through the JVM
        commit = timed(record, "infer_and_write", lambda: ctx.store.write_mapped(
            inference_input(histories, partitions), inference_task(cfg, ctx.ds, records), request))
        return commit, records.value
    to_encode, reused = _split_users(ctx, histories, mode.previous_ds)
    record.count("users_reused", timed(record, "count_reused", reused.count))
    encoded = inference_input(to_encode, partitions).mapInArrow(inference_task(cfg, ctx.ds, records),
                                                                 from_arrow_schema(USER_LINKS.schema))
    commit = timed(record, "infer_and_write", lambda: ctx.store.write(encoded.unionByName(reused), request))
    return commit, records.value


def infer_user_links(ctx: RunContext, cfg: InferenceConfig, *, full: bool = False) -> StageResult:
    """``user_histories(ds)`` -> ``user_links(ds)``, incremental unless ``full`` or the previous
    day's links cannot be reused (the audit row says which and why)."""
    app_id = ctx.app_id(INFER_USER_LINKS)
    with audited(ctx.store, INFER_USER_LINKS, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = already_done(ctx, record, USER_LINKS.name, app_id)
        if done:
            return done
        require_partition(ctx, USER_HISTORIES.name, "extract-histories")
        mode = infer_mode(ctx, full)
        record.metrics.update(mode.audit())
        histories = ctx.store.read(USER_HISTORIES, partition={"ds": ctx.ds})
        request = WriteRequest(USER_LINKS, "overwrite", app_id, partition={"ds": ctx.ds},
                               metadata={"model_version": ctx.model_version})
        commit, task_records = _encode_and_write(ctx, cfg, record, histories, mode, request)
        tasks = sorted(task_records, key=lambda r: (r["partition"], r["attempt"]))
        reinferred = sum(int(t["users"]) for t in tasks)
        record.count("users_reinferred", reinferred)
        record.count("users", reinferred + int(record.metrics.setdefault("users_reused", 0)))
        record.count("tokens", sum(int(t["tokens"]) for t in tasks))
        record.metrics["devices"] = sorted({str(t["device"]) for t in tasks})
        record.metrics["gpus_assigned"] = sorted({g for t in tasks for g in t["gpus"]})
        record.metrics["tasks"] = tasks[:256]
        return finish(record, commit)
