"""The score_topk stage: ``user_links(ds)`` x ``candidate_link_weights(model_version)`` ->
``recommendations(ds)``, as steps a reader follows: read the inputs -> plan (pure,
:mod:`pipelines.stages.scoring_plan`, audited) -> candidates and scoring input -> score (the
tasks of :mod:`pipelines.runtime.scoring_task`) -> quality gate on the staged rows -> commit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from pipelines.errors import ModelVersionMismatchError, PartitionNotFoundError, reraise_task_error
from pipelines.stages.context import (
    EXTRACT_HISTORIES,
    INFER_USER_LINKS,
    SCORE_TOPK,
    RunContext,
    StageResult,
    already_done,
    finish,
    link_versions,
    require_partition,
    timed,
)
from pipelines.stages.incremental import (
    RunMode,
    copied_users,
    copies_marked,
    encoded_link_files,
    files_fingerprint,
    first_difference,
    metrics_of,
    previous_ds,
    previous_run,
    unchanged_users,
)
from pipelines.stages.scoring_plan import ScoringPlan, ScoringSizes, check_top_k, plan_scoring
from pipelines.tables.audit import AuditRecord, audited
from pipelines.tables.schemas import (
    CANDIDATE_LINK_WEIGHTS,
    RECOMMENDATIONS,
    USER_CANDIDATES,
    USER_HISTORIES,
    USER_LINKS,
)
from pipelines.tables.spark_rows import first_row
from pipelines.tables.store import CommitResult, StagedWrite, WriteRequest

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame

    from pipelines.runtime.candidate_matrix import CandidateMatrix
    from pipelines.runtime.scoring_task import LinkFiles, ScoringConfig
    from pipelines.tables.store import ArrowTask

T = TypeVar("T")


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
    return int(first_row(histories.agg(F.max("n_seen")), "max(n_seen) of user_histories")[0] or 0)


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
    to_score: DataFrame  # the rows of user_links(ds) to score (incremental: the changed users')
    copy: tuple[DataFrame, ArrowTask] | None = None  # incremental: writes the other users' lists of the day before
    kept: _KeptUsers | None = None  # incremental: the users whose lists are copied

    @property
    def reused_users(self) -> int:
        return 0 if self.kept is None else len(self.kept.ids)


@dataclass(frozen=True)
class _KeptUsers:
    """The users whose lists an incremental run copies, as each consumer needs them."""

    ids: np.ndarray  # on the driver
    frame: DataFrame  # (user_id), for Spark joins
    shipped: Broadcast[np.ndarray]  # for tasks that read files themselves


def _read_scoring_inputs(ctx: RunContext, top_k: int) -> _ScoringInputs:
    """Both input partitions exist and agree with the checkpoint's model version; top_k fits."""
    from pyspark.sql import functions as F


    users = require_partition(ctx, USER_HISTORIES.name, "extract-histories")
    histories = ctx.store.read(USER_HISTORIES, partition={"ds": ctx.ds})
    if (ctx.store.partition_rows(USER_LINKS, {"ds": ctx.ds}) == 0
            and histories.where(F.col("n") > 0).limit(1).count() > 0):
        # users with a history but no links: scoring would silently give them nothing
        raise PartitionNotFoundError("user_links", {"ds": ctx.ds},
                                     hint=f"; run infer-user-links for ds={ctx.ds} first")
    links = ctx.store.read(USER_LINKS, partition={"ds": ctx.ds})
    versions = link_versions(ctx, ctx.ds, links)
    if versions and versions != [ctx.model_version]:
        raise ModelVersionMismatchError(
            f"table 'user_links' (ds={ctx.ds}) holds model_version {versions}, but the checkpoint "
            f"and candidate_link_weights are {ctx.model_version}; re-run infer-user-links"
        )
    candidates = _candidate_count(ctx)
    check_top_k(top_k, candidates)
    link_files = (ctx.store.file_uris(USER_LINKS, partition={"ds": ctx.ds})
                  if ctx.store.file_list_exact else [])
    # seen lists are the user's whole seen set up to ds, which neither the model's window nor
    # extract's --max-history bounds: sized from the partition's largest
    return _ScoringInputs(histories, links, versions, users, _largest_seen_set(ctx, histories), link_files,
                          candidates, links)


def scoring_signature(ctx: RunContext, cfg: ScoringConfig) -> dict[str, object]:
    """What a user's list depends on besides their L_P and seen items: recorded in the audit row,
    and compared with the previous day's before its lists are reused."""
    files = ctx.store.file_uris(CANDIDATE_LINK_WEIGHTS, partition={"model_version": ctx.model_version})
    return {"model_version": ctx.model_version, "top_k": cfg.top_k, "exclude_seen": cfg.exclude_seen,
            "candidates_fingerprint": files_fingerprint(ctx.store.uri(CANDIDATE_LINK_WEIGHTS.name), files)}


def score_mode(ctx: RunContext, cfg: ScoringConfig, signature: dict[str, object], full: bool) -> RunMode:
    """Incremental when the previous day was scored with the same candidates and settings."""
    prev = previous_ds(ctx.ds)
    if full:
        return RunMode.full(prev, "a full run was asked for (--full)")
    if cfg.per_user_candidates:
        return RunMode.full(prev, "per-user candidate lists (user_candidates) are a new input every day")
    row, why_not = previous_run(ctx.store, SCORE_TOPK, prev, upstream=[EXTRACT_HISTORIES, INFER_USER_LINKS],
                                tables=[USER_HISTORIES.name, USER_LINKS.name, RECOMMENDATIONS.name])
    if row is None:
        return RunMode.full(prev, why_not)
    for spec in (RECOMMENDATIONS, USER_HISTORIES):
        if ctx.store.partition_rows(spec, {"ds": prev}) == 0:
            return RunMode.full(prev, f"{spec.name} has no rows for the previous day {prev}")
    changed = first_difference({"model_version": row["model_version"], **metrics_of(row)}, signature)
    if changed:
        return RunMode.full(prev, changed)
    return RunMode(True, f"the candidates and scoring settings are those of {prev}", prev)


def _reuse_previous(ctx: RunContext, record: AuditRecord, inputs: _ScoringInputs, prev: str,
                    shipped: _Shipped) -> _ScoringInputs:
    """The inputs with only the users whose history or seen items changed left to score, and the
    part of the write that copies the others' lists of the previous day."""
    from pyspark.sql import functions as F

    from pipelines.runtime.row_copy import copy_part

    marked = copies_marked(ctx.store, ctx.ds)
    record.metrics["changed_users_by"] = "extracted_ds" if marked else "comparing histories"
    # a kept user without a list on the day before (no eligible candidate) has none today either
    keep = (copied_users(ctx.store, ctx.ds) if marked else
            unchanged_users(inputs.histories, ctx.store.read(USER_HISTORIES, partition={"ds": prev}),
                            compare_seen=True))
    keep_frame = ctx.spark.createDataFrame(pa.table({"user_id": pa.array(keep, pa.int64())}))
    shipped_keep = shipped.broadcast(ctx, keep)
    copy = copy_part(ctx.spark, RECOMMENDATIONS, file_list_exact=ctx.store.file_list_exact,
                     files=ctx.store.file_uris(RECOMMENDATIONS, partition={"ds": prev}),
                     previous=ctx.store.read(RECOMMENDATIONS, partition={"ds": prev}),
                     partition={"ds": ctx.ds}, keep=shipped_keep, keep_frame=keep_frame)
    return dataclasses.replace(inputs, to_score=inputs.links.join(F.broadcast(keep_frame), "user_id", "left_anti"),
                               copy=copy, kept=_KeptUsers(keep, keep_frame, shipped_keep),
                               link_files=_link_files_to_score(ctx, record, inputs.link_files, marked))


def _link_files_to_score(ctx: RunContext, record: AuditRecord, link_files: list[str], marked: bool) -> list[str]:
    """The user_links(ds) files the scoring tasks read: those infer_user_links wrote for the users
    marked ``extracted_ds = ds`` when it names them (the users scored here: the other rows were
    copied, and their L_P is not needed), else all."""
    if not link_files:
        return link_files
    encoded, why_not = encoded_link_files(ctx.store, ctx.ds) if marked else (None, "users found by comparing histories")
    cores = max(1, ctx.spark.sparkContext.defaultParallelism)
    if encoded is not None and len(encoded) < cores:
        why_not = f"{len(encoded)} encoded file(s), fewer than the {cores} cores"
        encoded = None
    read = link_files if encoded is None else encoded
    record.metrics.update(link_files=len(link_files), link_files_read=len(read))
    if encoded is None:
        record.metrics["link_files_read_all_because"] = why_not
    return read


def _plan(ctx: RunContext, cfg: ScoringConfig, inputs: _ScoringInputs) -> ScoringPlan:

    mc = ctx.checkpoint.config
    sizes = ScoringSizes(users=inputs.users, largest_seen=inputs.largest_seen, candidates=inputs.candidates,
                           candidate_row_bytes=4 * (mc.n_heads * mc.n_links + mc.d_model + 1) + 8,
                           link_files=len(inputs.link_files),
                           cores=max(1, ctx.spark.sparkContext.defaultParallelism),
                           scored_users=None if inputs.kept is None else inputs.users - inputs.reused_users)
    return plan_scoring(cfg, sizes)


@dataclass
class _Shipped:
    """Broadcast variables of one run, destroyed when the stage ends."""

    items: list[Broadcast[Any]] = field(default_factory=list)

    def broadcast(self, ctx: RunContext, value: T) -> Broadcast[T]:
        shipped = ctx.spark.sparkContext.broadcast(value)
        self.items.append(shipped)
        return shipped

    def destroy(self) -> None:
        for item in self.items:
            item.destroy()


def _load_candidates(ctx: RunContext, plan: ScoringPlan, shipped: _Shipped
                     ) -> tuple[np.ndarray, Broadcast[CandidateMatrix] | None, list[str]]:
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

    def popular(self, ctx: RunContext, histories: DataFrame, candidate_ids: np.ndarray, k: int,
                every_user: bool) -> list[tuple[int, int, float]]:
        """The popularity list: from the seen lists on the driver when they hold ``every_user``'s
        history, else from the partition's files read on the driver (delta-rs), else by a Spark
        job over ``histories``."""
        from pipelines.runtime import scoring_task as s

        if self.seen_lists is not None and every_user:
            return s.popular_items_arrow(self.seen_lists.column("item_ids"), candidate_ids, k)
        if ctx.store.file_list_exact:
            files = ctx.store.file_uris(USER_HISTORIES, partition={"ds": ctx.ds})
            return s.popular_items_from_files(files, candidate_ids, k)
        return s.popular_items(histories, candidate_ids, k)


def _scoring_input(ctx: RunContext, cfg: ScoringConfig, plan: ScoringPlan, inputs: _ScoringInputs,
                   shipped: _Shipped, record: AuditRecord) -> _Scoring:
    """With the seen lists broadcast and a user_links file per core, each task reads its file
    itself and L_P never becomes Spark rows; otherwise users are joined to their seen lists (and
    per-user candidates) in Spark and repartitioned evenly.  Incremental: the seen lists of the
    users to score only."""
    from pyspark.sql import functions as F

    from pipelines.runtime import scoring_task as s

    seen_lists = (ctx.store.read_arrow(USER_HISTORIES, ["user_id", "seen_item_ids", "item_ids"],
                                       partition={"ds": ctx.ds},
                                       exclude_users=None if inputs.kept is None else inputs.kept.ids)
                  if plan.seen_broadcast else None)
    if plan.reads_link_files:
        seen_table = None
        if cfg.exclude_seen and seen_lists is not None:
            seen_table = shipped.broadcast(ctx, seen_lists.select(["user_id", "seen_item_ids"])
                                           .rename_columns(["user_id", "seen"]))
        reader = s.LinkFiles(seen_table, skip=None if inputs.kept is None else inputs.kept.shipped)
        return _Scoring(s.link_file_rows(ctx.spark, inputs.link_files), reader, seen_lists, None)
    seen = inputs.histories.select("user_id", F.col("seen_item_ids").alias("seen"))
    if inputs.kept is not None:  # the plan sized the broadcast by the users to score
        seen = seen.join(F.broadcast(inputs.kept.frame), "user_id", "left_anti")
    users = inputs.to_score.select("user_id", "l_p").join(F.broadcast(seen) if plan.seen_broadcast else seen,
                                                       "user_id", "left")
    user_candidates = None
    if cfg.per_user_candidates:
        require_partition(ctx, USER_CANDIDATES.name, "the retrieval job that writes user_candidates")
        user_candidates = ctx.store.read(USER_CANDIDATES, partition={"ds": ctx.ds}).select("user_id", "item_ids")
        users = users.join(user_candidates.withColumnRenamed("item_ids", "candidates"), "user_id", "left")
        listed = user_candidates.join(inputs.links.select("user_id"), "user_id", "left_semi").count()
        record.count("users_with_own_candidates", listed)
    return _Scoring(users.repartition(plan.scoring_partitions), None, seen_lists, user_candidates)


def _gated_rows(record: AuditRecord, staged: StagedWrite, inputs: _ScoringInputs) -> tuple[DataFrame, DataFrame]:
    """(recommendations, user_histories) rows the gate checks before the commit: the recomputed
    users' only when the other lists are copied (they passed the previous day's gate with the
    same L_P, seen items, candidates and settings; validate-publish gates the whole partition
    before it is published).  The recomputed rows are the scoring's own files where the store
    keeps them apart from the copied ones."""
    from pyspark.sql import functions as F

    if inputs.kept is None:
        record.metrics["gate_scope"] = "all users"
        return staged.frame, inputs.histories
    record.metrics["gate_scope"] = "recomputed users"
    kept = F.broadcast(inputs.kept.frame)
    recs = (staged.own_frame if staged.own_frame is not None
            else staged.frame.join(kept, "user_id", "left_anti"))
    return recs, inputs.histories.join(kept, "user_id", "left_anti")


def _stage_gate_commit(ctx: RunContext, cfg: ScoringConfig, record: AuditRecord, recs: DataFrame,
                       inputs: _ScoringInputs, candidate_ids: np.ndarray,
                       user_candidates: DataFrame | None) -> CommitResult:
    """Scored once: the tasks write the rows to files the table does not reference yet, the gate
    reads those files, and only a passing gate commits them; otherwise they are deleted."""
    from pipelines.stages.quality_gate import check_recommendations

    ids_df = ctx.spark.createDataFrame(pa.table({"item_id": pa.array(candidate_ids, pa.int64())}))
    staged = None
    try:
        try:  # scoring tasks run here: their errors (e.g. NaN in a candidate shard) come back as ours
            request = WriteRequest(RECOMMENDATIONS, "overwrite", ctx.app_id(SCORE_TOPK), partition={"ds": ctx.ds},
                                   metadata={"model_version": ctx.model_version, "top_k": cfg.top_k})
            extra = [] if inputs.copy is None else [inputs.copy]
            staged = timed(record, "score", lambda: ctx.store.stage(recs, request, extra=extra))
            frame, histories = _gated_rows(record, staged, inputs)
            report = timed(record, "gate", lambda: check_recommendations(
                frame, histories, ids_df, ds=ctx.ds, top_k=cfg.top_k, model_version=ctx.model_version,
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
        return timed(record, "commit", lambda: ctx.store.commit_staged(to_commit))
    finally:
        if staged is not None:  # the scoring or the gate failed: nothing of this run stays
            ctx.store.discard_staged(staged)


def _record_users(record: AuditRecord, ctx: RunContext, inputs: _ScoringInputs) -> None:
    linked = ctx.store.partition_rows(USER_LINKS, {"ds": ctx.ds})
    record.count("users_rescored", linked - inputs.reused_users)
    record.count("users_reused", inputs.reused_users)
    record.count("users_popular", inputs.users - linked)


def score_topk(ctx: RunContext, cfg: ScoringConfig, *, full: bool = False) -> StageResult:
    """read -> (incremental: keep the unchanged users' lists) -> plan (pure, audited) -> candidates
    and scoring input -> score -> gate -> commit."""
    from pyspark.sql import functions as F

    from pipelines.runtime import scoring_task as s

    with audited(ctx.store, SCORE_TOPK, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = already_done(ctx, record, RECOMMENDATIONS.name, ctx.app_id(SCORE_TOPK))
        if done:
            return done
        inputs = _read_scoring_inputs(ctx, cfg.top_k)
        signature = scoring_signature(ctx, cfg)
        mode = score_mode(ctx, cfg, signature, full)
        record.metrics.update(signature, **mode.audit())
        shipped = _Shipped()
        try:
            if mode.incremental:
                inputs = timed(record, "find_changed_users", lambda: _reuse_previous(
                    ctx, record, inputs, mode.previous_ds, shipped))
            _record_users(record, ctx, inputs)
            plan = _plan(ctx, cfg, inputs)
            record.metrics.update(plan.audit(), candidates=inputs.candidates)
            candidate_ids, matrix, files = _load_candidates(ctx, plan, shipped)
            scoring = _scoring_input(ctx, cfg, plan, inputs, shipped, record)
            model_rows = s.model_topk(scoring.scored, cfg, mode=plan.candidate_mode, candidate_ids=candidate_ids,
                                      broadcast=matrix, files=files, shards=plan.shards, reader=scoring.reader)
            popular = scoring.popular(ctx, inputs.histories, candidate_ids, cfg.top_k,
                                      every_user=inputs.kept is None)
            record.metrics["popular_items"] = [p[1] for p in popular]
            recs = s.recommendations(model_rows, inputs.histories.where(F.col("n") == 0), popular, ds=ctx.ds,
                                     model_version=ctx.model_version)
            # reading the inputs' metadata, the candidate broadcast, the popularity list
            record.timing("prepare", record.elapsed())
            commit = _stage_gate_commit(ctx, cfg, record, recs, inputs, candidate_ids, scoring.user_candidates)
        finally:
            shipped.destroy()
        return finish(record, commit)
