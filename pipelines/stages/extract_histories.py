"""The extract_histories stage: ``events`` up to the end of ``ds`` -> ``user_histories(ds)``
(the transforms are :mod:`pipelines.stages.history_transforms`)."""

from __future__ import annotations

from pipelines.errors import PartitionNotFoundError
from pipelines.stages.context import EXTRACT_HISTORIES, RunContext, StageResult, already_done, finish, timed
from pipelines.tables.audit import audited
from pipelines.tables.schemas import USER_HISTORIES
from pipelines.tables.store import WriteRequest


def require_events_on_ds(ctx: RunContext, events_on_ds: int) -> None:
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

    from pipelines.stages import history_transforms as h

    cfg = h.HistoryConfig(ds=ctx.ds, max_history=max_history)
    app_id = ctx.app_id(EXTRACT_HISTORIES)
    with audited(ctx.store, EXTRACT_HISTORIES, ctx.ds, ctx.run_id) as record:
        record.model_version = ctx.model_version
        done = already_done(ctx, record, USER_HISTORIES.name, app_id)
        if done:
            return done
        ctx.store.check_schema(USER_HISTORIES)  # an outdated table is refused before the scan, not after
        events = ctx.store.read_table("events")
        h.check_events_schema(events)
        events = h.with_source_order(events)  # on the read itself: prune_events' Union hides _metadata
        pruned = h.prune_events(events, ctx.ds)
        if pruned is not events and not allow_empty_ds:  # date-partitioned: a free check before the scan
            require_events_on_ds(ctx, ctx.store.count_rows("events", [(h.EVENT_DATE, "=", ctx.ds)]))
        flagged = h.flag_events(pruned, cfg)
        drops = timed(record, "scan_events", lambda: h.drop_counts(flagged))
        if not allow_empty_ds:
            require_events_on_ds(ctx, drops["events_on_ds"])
        if pruned is not events:  # rows of later date partitions with ts after ds are not read
            drops = h.with_unread_later_rows(drops, ctx.store.count_rows("events", [(h.EVENT_DATE, ">", ctx.ds)]))
        per_user = h.user_event_lists(flagged, ctx.vocabulary(), cfg).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            kept = timed(record, "group_users", lambda: h.kept_counts(per_user, cfg))
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
            request = WriteRequest(USER_HISTORIES, "overwrite", app_id, partition={"ds": ctx.ds},
                                   metadata={"model_version": ctx.model_version, "max_history": max_history})
            commit = timed(record, "write", lambda: ctx.store.write(h.to_histories(per_user, cfg), request))
        finally:
            per_user.unpersist()
        return finish(record, commit)
