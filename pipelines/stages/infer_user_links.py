"""The infer_user_links stage: ``user_histories(ds)`` -> ``user_links(ds)`` (L_P per user), written
by token-balanced inference tasks (:mod:`pipelines.runtime.inference_task`).

Incremental by default: when ``user_links`` of the previous day holds this model version's rows,
only the users whose history (``item_ids``, ``ts``) differs from the previous day's are encoded;
the others' rows are copied.  ``full=True`` encodes everyone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.stages.context import (
    EXTRACT_HISTORIES,
    INFER_USER_LINKS,
    RunContext,
    StageResult,
    already_done,
    finish,
    link_versions,
    require_partition,
    timed,
)
from pipelines.stages.incremental import (
    ENCODED_FILES,
    RunMode,
    copied_users,
    copies_marked,
    previous_ds,
    previous_run,
    unchanged_users,
)
from pipelines.tables.audit import AuditRecord, audited
from pipelines.tables.schemas import USER_HISTORIES, USER_LINKS
from pipelines.tables.store import CommitResult, WriteRequest

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

    from pipelines.runtime.inference_task import InferenceConfig, TaskRecord
    from pipelines.tables.store import ArrowTask


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
    versions = link_versions(ctx, prev)
    if versions != [ctx.model_version]:
        return RunMode.full(prev, f"user_links of {prev} holds model_version {versions}, this run "
                                  f"{ctx.model_version}")
    return RunMode(True, f"user_links of {prev} holds this model version's rows", prev)


def _kept_users(ctx: RunContext, histories: DataFrame, prev: str, marked: bool) -> tuple[np.ndarray, bool]:
    """(sorted ids of the users whose L_P of the previous day still holds: a history (n > 0) equal
    to the previous day's and a row in its user_links; whether they are exactly the users whose
    history row was copied, ``marked`` (:func:`copies_marked`), so that the others are the rows
    marked ``extracted_ds = ds``)."""
    linked = ctx.store.read_arrow(USER_LINKS, ["user_id"], partition={"ds": prev}).column("user_id").to_numpy()
    if marked:
        copied = copied_users(ctx.store, ctx.ds)
        keep = copied[np.isin(copied, linked)]
        return keep, len(keep) == len(copied)
    same = unchanged_users(histories, ctx.store.read(USER_HISTORIES, partition={"ds": prev}), compare_seen=False)
    return same[np.isin(same, linked)], False


def _incremental_parts(ctx: RunContext, cfg: InferenceConfig, record: AuditRecord, histories: DataFrame,
                       prev: str, records: Accumulator[list[TaskRecord]],
                       ) -> tuple[list[tuple[DataFrame, ArrowTask]], int, bool]:
    """Encode the users whose history changed; copy the others' rows of the previous day (how
    many: the int; whether the encoded users are exactly those marked ``extracted_ds = ds``)."""
    from pyspark.sql import functions as F

    from pipelines.runtime.inference_task import inference_input, inference_task
    from pipelines.runtime.row_copy import copy_part

    marked = copies_marked(ctx.store, ctx.ds)
    record.metrics["changed_users_by"] = "extracted_ds" if marked else "comparing histories"
    keep, by_mark = timed(record, "find_changed_users", lambda: _kept_users(ctx, histories, prev, marked))
    keep_frame = ctx.spark.createDataFrame(pa.table({"user_id": pa.array(keep, pa.int64())}))
    if by_mark:  # a filter the Parquet reader applies to the files' statistics: the copied rows are not read
        to_encode = histories.where((F.col("n") > 0) & (F.col("extracted_ds") == F.lit(ctx.ds)))
    else:
        to_encode = histories.where(F.col("n") > 0).join(F.broadcast(keep_frame), "user_id", "left_anti")
    partitions = cfg.partitions or max(1, ctx.spark.sparkContext.defaultParallelism)
    copy = copy_part(ctx.spark, USER_LINKS, file_list_exact=ctx.store.file_list_exact,
                     files=ctx.store.file_uris(USER_LINKS, partition={"ds": prev}),
                     previous=ctx.store.read(USER_LINKS, partition={"ds": prev}), partition={"ds": ctx.ds},
                     keep=ctx.spark.sparkContext.broadcast(keep), keep_frame=keep_frame)
    return [(inference_input(to_encode, partitions), inference_task(cfg, ctx.ds, records)), copy], len(keep), by_mark


def _encode_and_write(ctx: RunContext, cfg: InferenceConfig, record: AuditRecord, histories: DataFrame,
                      mode: RunMode, request: WriteRequest) -> tuple[CommitResult, list[TaskRecord], int]:
    """Encode (and, incremental, copy) and commit, each task writing its rows to its own files;
    the inference tasks' records and the number of users copied."""
    from pipelines.runtime.inference_task import TaskRecords, inference_input, inference_task

    records = ctx.spark.sparkContext.accumulator([], TaskRecords())
    partitions = cfg.partitions or max(1, ctx.spark.sparkContext.defaultParallelism)
    record.metrics["partitions"] = partitions
    by_mark = False
    if mode.incremental:
        parts, reused, by_mark = _incremental_parts(ctx, cfg, record, histories, mode.previous_ds, records)
    else:
        parts, reused = [(inference_input(histories, partitions), inference_task(cfg, ctx.ds, records))], 0
    commit = timed(record, "infer_and_write", lambda: ctx.store.write_mapped_parts(parts, request))
    if by_mark and commit.part_files:
        # the files of the marked users' rows: score_topk reads only these to score the same users
        record.metrics[ENCODED_FILES] = list(commit.part_files[0])
    return commit, records.value, reused


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
        commit, tasks, reused = _encode_and_write(ctx, cfg, record, histories, mode, request)
        tasks = sorted(tasks, key=lambda t: (t.partition, t.attempt))
        reinferred = sum(t.users for t in tasks)
        record.count("users_reinferred", reinferred)
        record.count("users_reused", reused)
        record.count("users", reinferred + reused)
        record.count("tokens", sum(t.tokens for t in tasks))
        record.metrics["devices"] = sorted({t.device for t in tasks})
        record.metrics["gpus_assigned"] = sorted({g for t in tasks for g in t.gpus})
        record.metrics["tasks"] = [asdict(t) for t in tasks[:256]]
        return finish(record, commit)
