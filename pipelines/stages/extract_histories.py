"""The extract_histories stage: ``events`` up to the end of ``ds`` -> ``user_histories(ds)``
(the transforms are :mod:`pipelines.stages.history_transforms`).

Incremental by default (:mod:`pipelines.stages.incremental`): when the previous day's histories
were extracted with the same model vocabulary and ``--max-history`` and ``events`` only gained
files since the version that run read, only the events that run did not read are read (the
added files, and the rows of the others dated after the previous day): the histories of their
users are extended with them (:mod:`pipelines.stages.history_extension`), or, for a user with a
late event older than their history's newest, extracted again from all their events; the other
rows are copied from the previous day.  The result equals a full extraction, which ``full=True``
forces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.errors import PartitionNotFoundError
from pipelines.stages import history_extension as x
from pipelines.stages import history_transforms as h
from pipelines.stages.context import EXTRACT_HISTORIES, RunContext, StageResult, already_done, finish, timed
from pipelines.stages.incremental import (
    EventsChange,
    RunMode,
    events_change,
    first_difference,
    metrics_of,
    previous_ds,
    previous_run,
)
from pipelines.tables.audit import AuditRecord, audited
from pipelines.tables.schemas import EVENTS, USER_HISTORIES
from pipelines.tables.store import WriteRequest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def require_events_on_ds(ctx: RunContext, events_on_ds: int) -> None:
    if events_on_ds == 0:
        raise PartitionNotFoundError(
            "events", {"event_date": ctx.ds},
            hint=" (no valid event on that day: the upstream day has not landed or ds is wrong); "
                 "pass --allow-empty-ds only if the day truly had no events",
        )


def extract_mode(ctx: RunContext, max_history: int, events_version: int,
                 full: bool) -> tuple[RunMode, EventsChange | None]:
    """Incremental when the previous day's extraction can be extended (and how ``events``
    changed since), else full and why."""
    prev = previous_ds(ctx.ds)
    if full:
        return RunMode.full(prev, "a full run was asked for (--full)"), None
    row, why_not = previous_run(ctx.store, EXTRACT_HISTORIES, prev, tables=[USER_HISTORIES.name])
    if row is None:
        return RunMode.full(prev, why_not), None
    if ctx.store.partition_rows(USER_HISTORIES, {"ds": prev}) == 0:
        return RunMode.full(prev, f"user_histories has no rows for ds={prev} (rolled back?)"), None
    metrics = metrics_of(row)
    changed = first_difference({"model_version": row["model_version"], **metrics},
                               {"model_version": ctx.model_version, "max_history": max_history,
                                "events_table_id": ctx.store.table_id(EVENTS)})
    if changed:
        return RunMode.full(prev, changed), None
    since = metrics.get("events_version")
    if not isinstance(since, int) or since > events_version:
        return RunMode.full(prev, f"the previous run read events version {since!r}; it is now at "
                                  f"{events_version}"), None
    change = events_change(ctx.store, since, events_version)
    if change.removed_files:
        return RunMode.full(prev, f"{change.removed_files} data file(s) of events were removed or rewritten "
                                  f"since version {since} (a delete, overwrite or compaction)"), None
    built_on = row["table_version"]
    return RunMode(True, f"{len(change.added_files)} events file(s) added since version {since}", prev,
                   built_on if isinstance(built_on, int) else None), change


def unread_events(ctx: RunContext, cfg: h.HistoryConfig, change: EventsChange, prev: str) -> DataFrame:
    """The rows of ``events`` the previous day's run did not read that may count for ``ds``, each
    once and with its source order: every row of the files added since the version it read (late
    events too, whatever ``event_date`` they are filed under), and the rows of the files it read
    that are dated after its day and up to the end of ``ds`` (which it left out)."""
    from pyspark.sql import functions as F

    end = F.to_timestamp(F.lit(cfg.end_exclusive))
    after_prev = F.to_timestamp(F.lit(h.HistoryConfig(ds=prev, max_history=1).end_exclusive))
    added = ctx.store.read_files("events", change.added_files, version=change.version)
    kept = ctx.store.read_files("events", change.kept_files, version=change.version)
    h.check_events_schema(added)
    dated_after_prev = h.with_source_order(kept).where((F.col("ts") >= after_prev) & (F.col("ts") < end))
    return h.with_source_order(added).unionByName(dated_after_prev)


def _scan_events(ctx: RunContext, record: AuditRecord, cfg: h.HistoryConfig, version: int,
                 only: DataFrame | None, allow_empty_ds: bool, frames: list[DataFrame],
                 timing: str = "scan_events") -> tuple[DataFrame, dict[str, int]]:
    """The flagged events (of the ``only`` users, if given: persisted, a small set grouped later
    without a second scan) and their drop counts."""
    events = ctx.store.read_table("events", version=version)
    h.check_events_schema(events)
    events = h.with_source_order(events)  # on the read itself: prune_events' Union hides _metadata
    pruned = h.prune_events(events, ctx.ds)
    date_partitioned = pruned is not events
    if date_partitioned and not allow_empty_ds:  # a free check before the scan
        require_events_on_ds(ctx, ctx.store.count_rows("events", [(h.EVENT_DATE, "=", ctx.ds)]))
    if only is not None:
        pruned = pruned.join(only, "user_id", "left_semi")
    flagged = h.flag_events(pruned, cfg)
    if only is not None:
        flagged = _persisted(frames, flagged)
    drops = timed(record, timing, lambda: h.drop_counts(flagged))
    if not allow_empty_ds:
        require_events_on_ds(ctx, drops["events_on_ds"])
    if date_partitioned and only is None:  # rows of later date partitions with ts after ds are not read
        drops = h.with_unread_later_rows(drops, ctx.store.count_rows("events", [(h.EVENT_DATE, ">", ctx.ds)]))
    return flagged, drops


def _record_counts(record: AuditRecord, drops: dict[str, int], kept: dict[str, int], reused: int) -> int:
    """Audit the drop and keep counts; the partition's users (extracted + reused)."""
    valid = drops["events_read"] - drops["null_ids"] - drops["negative_ids"] - drops["events_after_ds"]
    counts = {
        **drops,
        "duplicate_events": valid - kept["distinct_events"],
        "unknown_items": kept["distinct_events"] - kept["known_events"],
        "truncated_events": kept["truncated_events"],
        "users_extracted": kept["users"],
        "users_reused": reused,
        "users": kept["users"] + reused,
        "users_without_known_items": kept["users_without_known_items"],
    }
    if "users_rescanned" in kept:  # incremental: the counts cover the events read, not whole histories
        counts["users_rescanned"] = kept["users_rescanned"]
    else:
        counts["history_events"] = kept["known_events"] - kept["truncated_events"]
    for name, value in counts.items():
        record.count(name, value)
    return counts["users"]


def _reused_rows(ctx: RunContext, prev: str, changed: DataFrame) -> DataFrame:
    """The previous day's rows of the users without a change, as rows of ``ds``."""
    from pyspark.sql import functions as F

    previous = ctx.store.read(USER_HISTORIES, partition={"ds": prev})
    return (previous.join(changed, "user_id", "left_anti").withColumn("ds", F.lit(ctx.ds))
            .select(*USER_HISTORIES.schema.names))


def _events_version(ctx: RunContext) -> int:
    version = ctx.store.version(EVENTS)
    if version is None:
        from pipelines.errors import TableNotFoundError

        raise TableNotFoundError("events", ctx.store.uri("events"))
    return version


def _persisted(frames: list[DataFrame], frame: DataFrame) -> DataFrame:
    """``frame`` persisted, and remembered in ``frames`` to unpersist when the stage ends."""
    from pyspark import StorageLevel

    frames.append(frame.persist(StorageLevel.MEMORY_AND_DISK))
    return frames[-1]


def _full_histories(ctx: RunContext, record: AuditRecord, cfg: h.HistoryConfig, version: int,
                    allow_empty_ds: bool, frames: list[DataFrame]) -> tuple[DataFrame, int, int]:
    """Every user's history from all their events: (rows, users, event rows read)."""
    flagged, drops = _scan_events(ctx, record, cfg, version, None, allow_empty_ds, frames)
    per_user = _persisted(frames, h.user_event_lists(flagged, ctx.vocabulary(), cfg))
    kept = timed(record, "group_users", lambda: h.kept_counts(per_user, cfg))
    return h.to_histories(per_user, cfg), _record_counts(record, drops, kept, 0), drops["events_read"]


def _incremental_histories(ctx: RunContext, record: AuditRecord, cfg: h.HistoryConfig, change: EventsChange,
                           prev: str, allow_empty_ds: bool, frames: list[DataFrame],
                           ) -> tuple[DataFrame, int, int]:
    """The previous day's histories, those of the users with unread events extended with them
    (:mod:`pipelines.stages.history_extension`; a user with a late event older than their
    history's newest is extracted again from all their events): (rows, users, event rows read)."""
    from pyspark.sql import functions as F

    flagged = _persisted(frames, h.flag_events(unread_events(ctx, cfg, change, prev), cfg))
    drops = timed(record, "scan_events", lambda: h.drop_counts(flagged))
    if not allow_empty_ds:  # every event dated ds is unread: the day before's run left it out
        require_events_on_ds(ctx, drops["events_on_ds"])
    previous = ctx.store.read(USER_HISTORIES, partition={"ds": prev})
    joined = _persisted(frames, x.with_previous(h.user_event_lists(flagged, ctx.vocabulary(), cfg), previous))
    kept = timed(record, "group_users", lambda: x.extension_counts(joined, cfg))
    histories = x.extended_histories(joined, cfg)
    if kept["users_rescanned"]:
        late = _persisted(frames, joined.where(~F.col(x.EXTENDABLE)).select("user_id"))
        rescanned, _ = _scan_events(ctx, record, cfg, change.version, late, True, frames, "rescan_events")
        histories = histories.unionByName(h.to_histories(h.user_event_lists(rescanned, ctx.vocabulary(), cfg), cfg))
    carried = _reused_rows(ctx, prev, joined.select("user_id"))
    reused = timed(record, "count_reused", carried.count)
    return histories.unionByName(carried), _record_counts(record, drops, kept, reused), drops["events_read"]


def extract_histories(ctx: RunContext, max_history: int, *, allow_empty_ds: bool = False,
                      full: bool = False) -> StageResult:
    """``events`` up to the end of ``ds`` -> ``user_histories(ds)``, incremental unless ``full``
    or the previous day cannot be extended (the audit row says which and why).

    A ``ds`` without a single valid event is :class:`PartitionNotFoundError` (histories that
    silently stop at an earlier day would be published as today's) unless ``allow_empty_ds``.
    """
    cfg = h.HistoryConfig(ds=ctx.ds, max_history=max_history)
    app_id = ctx.app_id(EXTRACT_HISTORIES)
    with audited(ctx.store, EXTRACT_HISTORIES, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = already_done(ctx, record, USER_HISTORIES.name, app_id)
        if done:
            return done
        ctx.store.check_schema(USER_HISTORIES)  # an outdated table is refused before the scan, not after
        version = _events_version(ctx)
        record.metrics.update(events_version=version, events_table_id=ctx.store.table_id(EVENTS),
                              max_history=max_history)
        mode, change = extract_mode(ctx, max_history, version, full)
        record.metrics.update(mode.audit())
        frames: list[DataFrame] = []
        try:
            if change is None:
                histories, users, read = _full_histories(ctx, record, cfg, version, allow_empty_ds, frames)
            else:
                histories, users, read = _incremental_histories(ctx, record, cfg, change, mode.previous_ds,
                                                                allow_empty_ds, frames)
            if users == 0:
                raise PartitionNotFoundError(
                    "events", {"event_date": f"<= {ctx.ds}"},
                    hint=f" with usable ids up to the end of ds={ctx.ds} ({read} row(s) read)",
                )
            request = WriteRequest(USER_HISTORIES, "overwrite", app_id, partition={"ds": ctx.ds},
                                   metadata={"model_version": ctx.model_version, "max_history": max_history})
            commit = timed(record, "write", lambda: ctx.store.write(histories, request))
        finally:
            for frame in frames:
                frame.unpersist()
        return finish(record, commit)
