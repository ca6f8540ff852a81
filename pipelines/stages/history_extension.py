"""Incremental extraction: a user's history of ``ds`` as their history of the day before extended
with the events that day's run did not read (pure DataFrame transforms, no I/O).

Exact when every new event of the user is strictly newer than the newest event of their previous
history (or they had no known event before): no new event can then duplicate an old one or tie
with one (ties keep source order, which a history row does not record), the new known events
sort after the old ones, so the last ``max_history`` of old + new are those of all events, and
the seen items are the union of the old and the new.  Events of unknown items never enter a
history, so they do not matter for that order.  The other users (a late event older than their
history's newest) are extracted again from all their events (:mod:`pipelines.stages.extract_histories`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.stages.history_transforms import HistoryConfig
from pipelines.tables.spark_rows import first_row

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EXTENDABLE = "extendable"


def with_previous(new_lists: DataFrame, previous: DataFrame) -> DataFrame:
    """:func:`~pipelines.stages.history_transforms.user_event_lists` of the new events joined with
    the previous day's ``user_histories`` rows (``prev_*`` columns, null for a new user), and
    whether the user's history can be extended (``extendable``)."""
    from pyspark.sql import functions as F

    prev = previous.select("user_id", F.col("item_ids").alias("prev_item_ids"), F.col("ts").alias("prev_ts"),
                           F.col("seen_item_ids").alias("prev_seen"))
    joined = new_lists.join(prev, "user_id", "left")
    newest_before = F.element_at(F.col("prev_ts"), -1)
    extendable = F.col("prev_ts").isNull() | (F.size("prev_ts") == 0) | (F.col("first_ts") > newest_before)
    return joined.withColumn(EXTENDABLE, extendable)


def extended_histories(joined: DataFrame, cfg: HistoryConfig) -> DataFrame:
    """``user_histories`` rows of ``ds`` for the ``extendable`` rows of :func:`with_previous`: the
    previous items and times followed by the new known events, the last ``max_history`` of them,
    and the union of the seen items (ascending ids)."""
    from pyspark.sql import functions as F

    def old(column: str, element: str) -> F.Column:
        return F.coalesce(F.col(column), F.array().cast(f"array<{element}>"))

    items = F.concat(old("prev_item_ids", "bigint"), F.transform("events", lambda e: e["item_id"]))
    times = F.concat(old("prev_ts", "timestamp"), F.transform("events", lambda e: e["ts"]))
    start = F.greatest(F.size(items) - F.lit(cfg.max_history) + 1, F.lit(1))
    seen = F.array_sort(F.array_distinct(F.concat(old("prev_seen", "bigint"),
                                                  F.transform("events", lambda e: e["item_id"]))))
    rows = joined.where(F.col(EXTENDABLE)).select(
        "user_id", F.slice(items, start, cfg.max_history).alias("item_ids"),
        F.slice(times, start, cfg.max_history).alias("ts"), seen.alias("seen_item_ids"))
    return rows.select(F.lit(cfg.ds).alias("ds"), "user_id", "item_ids", "ts",
                       F.size("item_ids").cast("int").alias("n"), "seen_item_ids",
                       F.size("seen_item_ids").cast("int").alias("n_seen"), F.lit(cfg.ds).alias("extracted_ds"))


def extension_counts(joined: DataFrame, cfg: HistoryConfig) -> dict[str, int]:
    """One pass over :func:`with_previous`: the new events kept (distinct, of known items), the
    users with new events, those extracted again from all their events (``users_rescanned``),
    and the extended users' events pushed out of the history window and users still without a
    known item."""
    from pyspark.sql import functions as F

    before = F.when(F.col("prev_item_ids").isNull(), F.lit(0)).otherwise(F.size("prev_item_ids"))
    extendable = F.col(EXTENDABLE)
    row = first_row(joined.agg(
        F.sum("n_events").alias("distinct_events"),
        F.sum(F.size("events")).alias("known_events"),
        F.count(F.lit(1)).alias("users"),
        F.sum((~extendable).cast("long")).alias("users_rescanned"),
        F.sum(F.when(extendable, F.greatest(before + F.size("events") - F.lit(cfg.max_history), F.lit(0))))
        .alias("truncated_events"),
        F.sum((extendable & (before + F.size("events") == 0)).cast("long")).alias("users_without_known_items"),
    ), "the counts of the extended histories")
    return {k: int(row[k] or 0) for k in row.asDict()}
