"""The four nightly stages: read through the table layer, transform, write one commit, audit.

Each stage is idempotent per ``ds``: it overwrites its own partition in one
atomic commit keyed by ``<stage>:ds=<ds>:run=<run_id>``.  A retry of the same run
(same run id, e.g. an Airflow task retry after the commit landed) finds that key
committed and does nothing; a new run replaces the partition with identical
content when the inputs are the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from pipelines.errors import ConfigError, ModelVersionMismatchError, PartitionNotFoundError, reraise_task_error
from pipelines.runtime.model_runtime import check_pipeline_model
from pipelines.tables.audit import STATUS_SKIPPED, AuditRecord, audited
from pipelines.tables.schemas import (
    CANDIDATE_LINK_WEIGHTS,
    ITEMS,
    RECOMMENDATIONS,
    USER_CANDIDATES,
    USER_HISTORIES,
    USER_LINKS,
)
from pipelines.tables.store import CommitResult, TableStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lime_model.checkpoint import Checkpoint
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.runtime.scoring_task import LinkFiles, ScoringConfig, ScoringPlan

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
        return cls(spark, store, ds, run_id, checkpoint_path, checkpoint)

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    def app_id(self, stage: str) -> str:
        return f"{stage}:ds={self.ds}:run={self.run_id}"

    def vocabulary(self) -> DataFrame:
        ids = pa.table({"item_id": pa.array(self.checkpoint.vocab.item_ids, pa.int64())})
        return self.spark.createDataFrame(ids)


@dataclass(frozen=True)
class StageResult:
    stage: str
    ds: str
    commit: CommitResult | None
    metrics: dict[str, object]

    @property
    def skipped(self) -> bool:
        return self.commit is None or self.commit.skipped


def _timed(record: AuditRecord, name: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        record.timing(name, time.perf_counter() - t0)


def _already_done(ctx: RunContext, record: AuditRecord, spec_name: str, app_id: str) -> StageResult | None:
    spec = {USER_HISTORIES.name: USER_HISTORIES, USER_LINKS.name: USER_LINKS,
            RECOMMENDATIONS.name: RECOMMENDATIONS, CANDIDATE_LINK_WEIGHTS.name: CANDIDATE_LINK_WEIGHTS}[spec_name]
    version = ctx.store.committed_version(spec, app_id)
    if version is None:
        return None
    record.status = STATUS_SKIPPED
    record.metrics["skipped_reason"] = f"{app_id} already committed to {spec_name}"
    log.info("%s: %s already committed; nothing to redo", record.job, app_id)
    return StageResult(record.job, ctx.ds, None, dict(record.metrics))


def _finish(record: AuditRecord, commit: CommitResult) -> StageResult:
    record.table_version = commit.version
    record.count("rows_written", commit.rows)
    record.count("files_written", commit.files)
    return StageResult(record.job, record.ds, commit, dict(record.metrics))


# --- extract_histories --------------------------------------------------------------------------
def _require_events_on_ds(ctx: RunContext, events_on_ds: int) -> None:
    if events_on_ds == 0:
        raise PartitionNotFoundError(
            "events", {"event_date": ctx.ds},
            hint=" (no valid event on that day: the upstream day has not landed or ds is wrong); "
                 "pass --allow-empty-ds only if the day truly had no events",
        )


def extract_histories(ctx: RunContext, max_history: int, *, allow_empty_ds: bool = False) -> StageResult:
    """``events`` up to the end of ``ds`` -> ``user_histories(ds)``.

    A ``ds`` without a single valid event is :class:`PartitionNotFoundError` (histories that
    silently stop at an earlier day would be published as today's) unless ``allow_empty_ds``.
    """
    from pyspark import StorageLevel

    from pipelines import histories as h

    cfg = h.HistoryConfig(ds=ctx.ds, max_history=max_history)
    app_id = ctx.app_id(EXTRACT_HISTORIES)
    with audited(ctx.store, EXTRACT_HISTORIES, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = _already_done(ctx, record, USER_HISTORIES.name, app_id)
        if done:
            return done
        ctx.store.check_schema(USER_HISTORIES)  # an outdated table is refused before the scan, not after
        events = ctx.store.read_table("events")
        h.check_events_schema(events)
        events = h.with_source_order(events)  # on the read itself: prune_events' Union hides _metadata
        pruned = h.prune_events(events, ctx.ds)
        if pruned is not events and not allow_empty_ds:  # date-partitioned: a free check before the scan
            _require_events_on_ds(ctx, ctx.store.count_rows("events", [(h.EVENT_DATE, "=", ctx.ds)]))
        flagged = h.flag_events(pruned, cfg)
        drops = _timed(record, "scan_events", lambda: h.drop_counts(flagged))
        assert isinstance(drops, dict)
        if not allow_empty_ds:
            _require_events_on_ds(ctx, drops["events_on_ds"])
        if pruned is not events:  # rows of later date partitions with ts after ds are not read
            drops = h.with_unread_later_rows(drops, ctx.store.count_rows("events", [(h.EVENT_DATE, ">", ctx.ds)]))
        per_user = h.user_event_lists(flagged, ctx.vocabulary(), cfg).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            kept = _timed(record, "group_users", lambda: h.kept_counts(per_user, cfg))
            assert isinstance(kept, dict)
            valid = drops["events_read"] - drops["null_ids"] - drops["negative_ids"] - drops["events_after_ds"]
            counts = {
                **drops,
                "duplicate_events": valid - kept["distinct_events"],
                "unknown_items": kept["distinct_events"] - kept["known_events"],
                "truncated_events": kept["truncated_events"],
                "users": kept["users"],
                "users_without_known_items": kept["users_without_known_items"],
                "history_events": kept["known_events"] - kept["truncated_events"],
            }
            for name, value in counts.items():
                record.count(name, value)
            if kept["users"] == 0:
                raise PartitionNotFoundError(
                    "events", {"event_date": f"<= {ctx.ds}"},
                    hint=f" with usable ids up to the end of ds={ctx.ds} ({drops['events_read']} row(s) read)",
                )
            commit = _timed(record, "write", lambda: ctx.store.write(
                h.to_histories(per_user, cfg), USER_HISTORIES, mode="overwrite", partition={"ds": ctx.ds},
                app_id=app_id, metadata={"model_version": ctx.model_version, "max_history": max_history}))
        finally:
            per_user.unpersist()
        assert isinstance(commit, CommitResult)
        return _finish(record, commit)


# --- precompute_candidates ------------------------------------------------------------------------
def precompute_candidates(ctx: RunContext, device: str = "auto") -> StageResult:
    """Skipped when this model version's candidates were built from the current catalogue version."""
    from pyspark.sql import functions as F

    from pipelines.errors import EmptyCatalogueError
    from pipelines.runtime.candidate_matrix import candidate_rows, catalogue_in_vocabulary

    items_version = ctx.store.version(ITEMS)
    if items_version is None:
        from pipelines.errors import TableNotFoundError

        raise TableNotFoundError("items", ctx.store.uri("items"))
    # the table id too: a dropped and re-created items table starts again at version 0
    app_id = (f"{PRECOMPUTE_CANDIDATES}:model_version={ctx.model_version}"
              f":items={ctx.store.table_id(ITEMS)}@v{items_version}")
    with audited(ctx.store, PRECOMPUTE_CANDIDATES, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        record.metrics["items_version"] = items_version
        done = _already_done(ctx, record, CANDIDATE_LINK_WEIGHTS.name, app_id)
        if done:
            return done
        items = ctx.store.read_table("items")
        ids = catalogue_in_vocabulary(items, ctx.vocabulary()).persist()
        try:
            catalogue = ids.count()
            read = items.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("item_id").alias("ids")).head()
            record.count("items_read", read["rows"])
            record.count("items_null_or_duplicate", read["rows"] - read["ids"])
            record.count("items_unknown_to_model", read["ids"] - catalogue)
            record.count("candidates", catalogue)
            if catalogue == 0:
                raise EmptyCatalogueError(
                    f"table 'items' has {read['rows']} row(s), {read['ids']} distinct item_id(s), none of them "
                    f"in the vocabulary of model {ctx.model_version}: nothing to score"
                )
            rows = candidate_rows(ids.repartition(max(1, min(ctx.spark.sparkContext.defaultParallelism,
                                                            catalogue // 4096 + 1))),
                                  ctx.checkpoint_path, ctx.model_version, device)
            commit = _timed(record, "write", lambda: ctx.store.write(
                rows, CANDIDATE_LINK_WEIGHTS, mode="overwrite", partition={"model_version": ctx.model_version},
                app_id=app_id, metadata={"items_version": items_version}))
        finally:
            ids.unpersist()
        assert isinstance(commit, CommitResult)
        return _finish(record, commit)


def catalogue_size(ctx: RunContext) -> int:
    """Items of ``items`` the model can score: what precompute_candidates will write (one Spark pass)."""
    from pipelines.errors import TableNotFoundError
    from pipelines.runtime.candidate_matrix import catalogue_in_vocabulary

    if ctx.store.version(ITEMS) is None:
        raise TableNotFoundError("items", ctx.store.uri("items"))
    return int(catalogue_in_vocabulary(ctx.store.read_table("items"), ctx.vocabulary()).count())


# --- infer_user_links -------------------------------------------------------------------------------
def _require_partition(ctx: RunContext, spec_name: str, stage_hint: str) -> int:
    """The partition's row count (from the table log); an empty or missing partition is an error."""
    spec = {USER_HISTORIES.name: USER_HISTORIES, USER_LINKS.name: USER_LINKS,
            USER_CANDIDATES.name: USER_CANDIDATES}[spec_name]
    rows = ctx.store.partition_rows(spec, {"ds": ctx.ds})
    if rows == 0:
        raise PartitionNotFoundError(spec_name, {"ds": ctx.ds}, hint=f"; run {stage_hint} for ds={ctx.ds} first")
    return rows


def infer_user_links(ctx: RunContext, cfg: InferenceConfig) -> StageResult:
    from pipelines.runtime.inference_task import TaskRecords, inference_input, inference_task

    app_id = ctx.app_id(INFER_USER_LINKS)
    with audited(ctx.store, INFER_USER_LINKS, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = _already_done(ctx, record, USER_LINKS.name, app_id)
        if done:
            return done
        _require_partition(ctx, USER_HISTORIES.name, "extract-histories")
        histories = ctx.store.read(USER_HISTORIES, partition={"ds": ctx.ds})
        records = ctx.spark.sparkContext.accumulator([], TaskRecords())
        partitions = cfg.partitions or max(1, ctx.spark.sparkContext.defaultParallelism)
        users = inference_input(histories, partitions)
        commit = _timed(record, "infer_and_write", lambda: ctx.store.write_mapped(
            users, inference_task(cfg, ctx.ds, records), USER_LINKS, mode="overwrite", partition={"ds": ctx.ds},
            app_id=app_id, metadata={"model_version": ctx.model_version}))
        assert isinstance(commit, CommitResult)
        tasks = sorted(records.value, key=lambda r: (r["partition"], r["attempt"]))
        record.count("users", sum(int(t["users"]) for t in tasks))
        record.count("tokens", sum(int(t["tokens"]) for t in tasks))
        record.metrics["partitions"] = partitions
        record.metrics["devices"] = sorted({str(t["device"]) for t in tasks})
        record.metrics["gpus_assigned"] = sorted({g for t in tasks for g in t["gpus"]})
        record.metrics["tasks"] = tasks[:256]
        return _finish(record, commit)


# --- score_topk ----------------------------------------------------------------------------------------
def _candidate_count(ctx: RunContext) -> int:
    rows = ctx.store.partition_rows(CANDIDATE_LINK_WEIGHTS, {"model_version": ctx.model_version})
    if rows == 0:
        present: list[str] = []
        if ctx.store.exists(CANDIDATE_LINK_WEIGHTS):
            df = ctx.store.read(CANDIDATE_LINK_WEIGHTS)
            present = sorted(r.model_version for r in df.select("model_version").distinct().limit(10).collect())
        raise ModelVersionMismatchError(
            f"table 'candidate_link_weights' has no rows for model_version {ctx.model_version} "
            f"(it holds {present or 'none'}); run precompute-candidates with this checkpoint"
        )
    return rows


def _largest_seen_set(ctx: RunContext, histories: DataFrame) -> int:
    """max(n_seen) of user_histories(ds), the longest seen list: from the log's file statistics,
    else by a Spark scan."""
    from pyspark.sql import functions as F

    bounds = ctx.store.column_bounds(USER_HISTORIES, "n_seen", {"ds": ctx.ds})
    if bounds is not None:
        return int(bounds[1])
    return int(histories.agg(F.max("n_seen")).head()[0] or 0)


def _link_versions(ctx: RunContext, links: DataFrame) -> list[str]:
    """Sorted distinct model versions of user_links(ds) (read as ``links``): from the log's file
    statistics when they show one value, else by a Spark scan."""
    bounds = ctx.store.column_bounds(USER_LINKS, "model_version", {"ds": ctx.ds})
    if bounds is not None and bounds[0] == bounds[1]:
        return [bounds[0]]
    return sorted(r.model_version for r in links.select("model_version").distinct().collect())


@dataclass
class _ScoringInputs:
    """What score_topk reads before it plans: the partitions, checked, and their sizes."""

    histories: DataFrame
    links: DataFrame
    versions: list[str]  # model versions in user_links(ds)
    users: int  # rows of user_histories(ds)
    largest_seen: int
    link_files: list[str]  # user_links(ds) files the tasks may read themselves (delta-rs only)
    candidates: int


def _read_scoring_inputs(ctx: RunContext, top_k: int) -> _ScoringInputs:
    """Both input partitions exist and agree with the checkpoint's model version; top_k fits."""
    from pyspark.sql import functions as F

    from pipelines.runtime import scoring_task as s

    users = _require_partition(ctx, USER_HISTORIES.name, "extract-histories")
    histories = ctx.store.read(USER_HISTORIES, partition={"ds": ctx.ds})
    if (ctx.store.partition_rows(USER_LINKS, {"ds": ctx.ds}) == 0
            and histories.where(F.col("n") > 0).limit(1).count() > 0):
        # users with a history but no links: scoring would silently give them nothing
        raise PartitionNotFoundError("user_links", {"ds": ctx.ds},
                                     hint=f"; run infer-user-links for ds={ctx.ds} first")
    links = ctx.store.read(USER_LINKS, partition={"ds": ctx.ds})
    versions = _link_versions(ctx, links)
    if versions and versions != [ctx.model_version]:
        raise ModelVersionMismatchError(
            f"table 'user_links' (ds={ctx.ds}) holds model_version {versions}, but the checkpoint "
            f"and candidate_link_weights are {ctx.model_version}; re-run infer-user-links"
        )
    candidates = _candidate_count(ctx)
    s.check_top_k(top_k, candidates)
    link_files = (ctx.store.file_uris(USER_LINKS, partition={"ds": ctx.ds})
                  if ctx.store.engine == "delta-rs" else [])
    # seen lists are the user's whole seen set up to ds, which neither the model's window nor
    # extract's --max-history bounds: sized from the partition's largest
    return _ScoringInputs(histories, links, versions, users, _largest_seen_set(ctx, histories), link_files,
                          candidates)


def _plan(ctx: RunContext, cfg: ScoringConfig, inputs: _ScoringInputs) -> ScoringPlan:
    from pipelines.runtime import scoring_task as s

    mc = ctx.checkpoint.config
    sizes = s.ScoringSizes(users=inputs.users, largest_seen=inputs.largest_seen, candidates=inputs.candidates,
                           candidate_row_bytes=4 * (mc.n_heads * mc.n_links + mc.d_model + 1) + 8,
                           link_files=len(inputs.link_files),
                           cores=max(1, ctx.spark.sparkContext.defaultParallelism))
    return s.plan_scoring(cfg, sizes)


@dataclass
class _Shipped:
    """Broadcast variables of one run, destroyed when the stage ends."""

    items: list[Any] = field(default_factory=list)

    def broadcast(self, ctx: RunContext, value: Any) -> Any:
        self.items.append(ctx.spark.sparkContext.broadcast(value))
        return self.items[-1]

    def destroy(self) -> None:
        for item in self.items:
            item.destroy()


def _load_candidates(ctx: RunContext, plan: ScoringPlan, shipped: _Shipped) -> tuple[np.ndarray, Any, list[str]]:
    """(candidate ids sorted, the matrix broadcast or None, shard files): read from the table
    files as Arrow on the driver, without a Spark job."""
    from pipelines.runtime.candidate_matrix import candidate_matrix

    mc, partition = ctx.checkpoint.config, {"model_version": ctx.model_version}
    if plan.candidate_mode == "broadcast":
        rows = ctx.store.read_arrow(CANDIDATE_LINK_WEIGHTS, CANDIDATE_LINK_WEIGHTS.data_schema.names,
                                    partition=partition)
        matrix = candidate_matrix(rows, mc.n_heads, mc.n_links, mc.d_model)
        return matrix.item_ids, shipped.broadcast(ctx, matrix), []
    ids = ctx.store.read_arrow(CANDIDATE_LINK_WEIGHTS, ["item_id"], partition=partition).column("item_id")
    return np.sort(ids.to_numpy()), None, ctx.store.file_uris(CANDIDATE_LINK_WEIGHTS, partition=partition)


@dataclass
class _Scoring:
    """The scoring job's input (Spark rows of users, or of user_links file paths) and its side inputs."""

    scored: DataFrame
    reader: LinkFiles | None  # when each task reads its own user_links file
    seen_lists: pa.Table | None  # broadcast seen lists (user_id, seen_item_ids, item_ids) or None
    user_candidates: DataFrame | None


def _scoring_input(ctx: RunContext, cfg: ScoringConfig, plan: ScoringPlan, inputs: _ScoringInputs,
                   shipped: _Shipped, record: AuditRecord) -> _Scoring:
    """With the seen lists broadcast and a user_links file per core, each task reads its file
    itself and L_P never becomes Spark rows; otherwise users are joined to their seen lists (and
    per-user candidates) in Spark and repartitioned evenly."""
    from pyspark.sql import functions as F

    from pipelines.runtime import scoring_task as s

    seen_lists = (ctx.store.read_arrow(USER_HISTORIES, ["user_id", "seen_item_ids", "item_ids"],
                                       partition={"ds": ctx.ds}) if plan.seen_broadcast else None)
    if plan.reads_link_files:
        seen_table = None
        if cfg.exclude_seen and seen_lists is not None:
            seen_table = shipped.broadcast(ctx, seen_lists.select(["user_id", "seen_item_ids"])
                                           .rename_columns(["user_id", "seen"]))
        return _Scoring(s.link_file_rows(ctx.spark, inputs.link_files), s.LinkFiles(seen_table), seen_lists, None)
    seen = inputs.histories.select("user_id", F.col("seen_item_ids").alias("seen"))
    users = inputs.links.select("user_id", "l_p").join(F.broadcast(seen) if plan.seen_broadcast else seen,
                                                       "user_id", "left")
    user_candidates = None
    if cfg.per_user_candidates:
        _require_partition(ctx, USER_CANDIDATES.name, "the retrieval job that writes user_candidates")
        user_candidates = ctx.store.read(USER_CANDIDATES, partition={"ds": ctx.ds}).select("user_id", "item_ids")
        users = users.join(user_candidates.withColumnRenamed("item_ids", "candidates"), "user_id", "left")
        listed = user_candidates.join(inputs.links.select("user_id"), "user_id", "left_semi").count()
        record.count("users_with_own_candidates", listed)
    return _Scoring(users.repartition(plan.scoring_partitions), None, seen_lists, user_candidates)


def _stage_gate_commit(ctx: RunContext, cfg: ScoringConfig, record: AuditRecord, recs: DataFrame,
                       inputs: _ScoringInputs, candidate_ids: np.ndarray,
                       user_candidates: DataFrame | None) -> CommitResult:
    """Scored once: the tasks write the rows to files the table does not reference yet, the gate
    reads those files, and only a passing gate commits them; otherwise they are deleted."""
    from pipelines.quality import check_recommendations

    ids_df = ctx.spark.createDataFrame(pa.table({"item_id": pa.array(candidate_ids, pa.int64())}))
    staged = None
    try:
        try:  # scoring tasks run here: their errors (e.g. NaN in a candidate shard) come back as ours
            staged = _timed(record, "score", lambda: ctx.store.stage(
                recs, RECOMMENDATIONS, mode="overwrite", app_id=ctx.app_id(SCORE_TOPK), partition={"ds": ctx.ds}))
            frame = staged.frame
            report = _timed(record, "gate", lambda: check_recommendations(
                frame, inputs.histories, ids_df, ds=ctx.ds, top_k=cfg.top_k, model_version=ctx.model_version,
                exclude_seen=cfg.exclude_seen, user_links=inputs.links, user_candidates=user_candidates,
                catalogue_size=len(candidate_ids), link_versions=inputs.versions,
                largest_seen=inputs.largest_seen))
        except Exception as exc:
            reraise_task_error(exc)
            raise
        record.metrics["quality"] = report.summary()
        report.raise_if_failed()
        # from here the files are the commit's: a failed commit leaves them unreferenced, not deleted
        to_commit, staged = staged, None
        return _timed(record, "commit", lambda: ctx.store.commit_staged(
            to_commit, metadata={"model_version": ctx.model_version, "top_k": cfg.top_k}))
    finally:
        if staged is not None:  # the scoring or the gate failed: nothing of this run stays
            ctx.store.discard_staged(staged)


def score_topk(ctx: RunContext, cfg: ScoringConfig) -> StageResult:
    """read -> plan (pure, audited) -> candidates and scoring input -> score -> gate -> commit."""
    from pyspark.sql import functions as F

    from pipelines.runtime import scoring_task as s

    with audited(ctx.store, SCORE_TOPK, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = _already_done(ctx, record, RECOMMENDATIONS.name, ctx.app_id(SCORE_TOPK))
        if done:
            return done
        inputs = _read_scoring_inputs(ctx, cfg.top_k)
        plan = _plan(ctx, cfg, inputs)
        record.metrics.update(plan.audit(), candidates=inputs.candidates)
        shipped = _Shipped()
        try:
            candidate_ids, matrix, files = _load_candidates(ctx, plan, shipped)
            scoring = _scoring_input(ctx, cfg, plan, inputs, shipped, record)
            model_rows = s.model_topk(scoring.scored, cfg, mode=plan.candidate_mode, candidate_ids=candidate_ids,
                                      broadcast=matrix, files=files, shards=plan.shards, reader=scoring.reader)
            popular = (s.popular_items(inputs.histories, candidate_ids, cfg.top_k) if scoring.seen_lists is None
                       else s.popular_items_arrow(scoring.seen_lists.column("item_ids"), candidate_ids, cfg.top_k))
            record.metrics["popular_items"] = [p[1] for p in popular]
            recs = s.recommendations(model_rows, inputs.histories.where(F.col("n") == 0), popular, ds=ctx.ds,
                                     model_version=ctx.model_version)
            # reading the inputs' metadata, the candidate broadcast, the popularity list
            record.timing("prepare", record.elapsed())
            commit = _stage_gate_commit(ctx, cfg, record, recs, inputs, candidate_ids, scoring.user_candidates)
        finally:
            shipped.destroy()
        return _finish(record, commit)
