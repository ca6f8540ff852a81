"""What the nightly stages share: the run context, the stage result, and the steps every
stage takes (skip a run already committed, time a step, record the commit in the audit row).

Each stage (one module per DAG task in :mod:`pipelines.stages`) is idempotent per ``ds``: it
overwrites its own partition in one atomic commit keyed by ``<stage>:ds=<ds>:run=<run_id>``.  A
retry of the same run (same run id, e.g. an Airflow task retry after the commit landed) finds
that key committed and does nothing; a new run replaces the partition with identical content
when the inputs are the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from pipelines.errors import ConfigError, PartitionNotFoundError
from pipelines.runtime.model_runtime import check_pipeline_model
from pipelines.tables.audit import STATUS_SKIPPED, AuditRecord
from pipelines.tables.schemas import (
    CANDIDATE_LINK_WEIGHTS,
    RECOMMENDATIONS,
    USER_CANDIDATES,
    USER_HISTORIES,
    USER_LINKS,
)
from pipelines.tables.store import CommitResult, TableStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lime_model.checkpoint import Checkpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTRACT_HISTORIES = "extract_histories"
PRECOMPUTE_CANDIDATES = "precompute_candidates"
INFER_USER_LINKS = "infer_user_links"
SCORE_TOPK = "score_topk"
STAGES = (EXTRACT_HISTORIES, PRECOMPUTE_CANDIDATES, INFER_USER_LINKS, SCORE_TOPK)


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares."""

    spark: SparkSession
    store: TableStore
    ds: str
    run_id: str
    checkpoint_path: str
    checkpoint: Checkpoint = field(repr=False)

    @classmethod
    def open(cls, spark: SparkSession, store: TableStore, ds: str, run_id: str, checkpoint_path: str) -> RunContext:
        """Validate the run's arguments and load the checkpoint, before any table is touched."""
        return cls(spark, store, ds, run_id, checkpoint_path, checked_run_inputs(store, ds, checkpoint_path))

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    def app_id(self, stage: str) -> str:
        return f"{stage}:ds={self.ds}:run={self.run_id}"

    def vocabulary(self) -> DataFrame:
        ids = pa.table({"item_id": pa.array(self.checkpoint.vocab.item_ids, pa.int64())})
        return self.spark.createDataFrame(ids)


def checked_run_inputs(store: TableStore, ds: str, checkpoint_path: str) -> Checkpoint:
    """The run's checkpoint, once ``ds``, the lakehouse root and the model are known to be usable."""
    from lime_model.checkpoint import load_checkpoint
    from pipelines.tables.store import check_lakehouse_root

    try:
        if dt.date.fromisoformat(ds).isoformat() != ds:
            raise ValueError(ds)
    except ValueError:
        raise ConfigError(f"ds must be a date YYYY-MM-DD, got {ds!r}") from None
    check_lakehouse_root(store.root)  # a typo must fail here, not create a new lakehouse
    checkpoint = load_checkpoint(checkpoint_path)
    check_pipeline_model(checkpoint.config, checkpoint_path)
    return checkpoint


@dataclass(frozen=True)
class StageResult:
    stage: str
    ds: str
    commit: CommitResult | None
    metrics: dict[str, object]

    @property
    def skipped(self) -> bool:
        return self.commit is None or self.commit.skipped


def timed(record: AuditRecord, name: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        record.timing(name, time.perf_counter() - t0)


def already_done(ctx: RunContext, record: AuditRecord, spec_name: str, app_id: str) -> StageResult | None:
    spec = {USER_HISTORIES.name: USER_HISTORIES, USER_LINKS.name: USER_LINKS,
            RECOMMENDATIONS.name: RECOMMENDATIONS, CANDIDATE_LINK_WEIGHTS.name: CANDIDATE_LINK_WEIGHTS}[spec_name]
    if ctx.store.committed_version(spec, app_id) is None:
        return None
    return skipped(record, ctx.ds, spec_name, app_id)


def skipped(record: AuditRecord, ds: str, spec_name: str, app_id: str) -> StageResult:
    """The result of a stage whose commit ``app_id`` already landed; its audit row says so."""
    record.status = STATUS_SKIPPED
    record.metrics["skipped_reason"] = f"{app_id} already committed to {spec_name}"
    log.info("%s: %s already committed; nothing to redo", record.job, app_id)
    return StageResult(record.job, ds, None, dict(record.metrics))


def finish(record: AuditRecord, commit: CommitResult) -> StageResult:
    record.table_version = commit.version
    record.count("rows_written", commit.rows)
    record.count("files_written", commit.files)
    return StageResult(record.job, record.ds, commit, dict(record.metrics))


def require_partition(ctx: RunContext, spec_name: str, stage_hint: str) -> int:
    """The partition's row count (from the table log); an empty or missing partition is an error."""
    spec = {USER_HISTORIES.name: USER_HISTORIES, USER_LINKS.name: USER_LINKS,
            USER_CANDIDATES.name: USER_CANDIDATES}[spec_name]
    rows = ctx.store.partition_rows(spec, {"ds": ctx.ds})
    if rows == 0:
        raise PartitionNotFoundError(spec_name, {"ds": ctx.ds}, hint=f"; run {stage_hint} for ds={ctx.ds} first")
    return rows


def link_versions(ctx: RunContext, ds: str, links: DataFrame | None = None) -> list[str]:
    """Sorted distinct model versions of user_links(ds): from the log's file statistics when they
    show one value, else by a Spark scan (of ``links`` when the caller has read it already)."""
    bounds = ctx.store.column_bounds(USER_LINKS, "model_version", {"ds": ds})
    if bounds is not None and bounds[0] == bounds[1]:
        return [str(bounds[0])]
    frame = links if links is not None else ctx.store.read(USER_LINKS, partition={"ds": ds})
    return sorted(r.model_version for r in frame.select("model_version").distinct().collect())
