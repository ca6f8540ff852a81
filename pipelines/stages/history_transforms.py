"""extract_histories: ``events`` up to the end of ``ds`` -> ``user_histories(ds)``.

Pure DataFrame transforms (no I/O): the job reads the inputs and writes the output.

Rules (DESIGN.md §2), each dropped row counted:

* only events with ``ts`` before the end of ``ds`` (UTC) -> ``events_after_ds``, whatever
  ``event_date`` partition they are filed under (a late event filed under a later day is kept
  and counted in ``late_filed_events``);
* rows with a null ``user_id``, ``item_id`` or ``ts`` -> ``null_ids``; negative ids -> ``negative_ids``;
* exact duplicate events (same user, item, ts) kept once, the first in source order ->
  ``duplicate_events``;
* items unknown to the model vocabulary -> ``unknown_items`` (the user stays, possibly
  with an empty history: that user gets the popularity list downstream);
* the last ``max_history`` events by time -> ``truncated_events``; events with equal ``ts`` keep
  their source order (:func:`with_source_order`: data file path, then row index in the file),
  never item-id order;
* ``seen_item_ids``: every distinct known item of the user's events up to ds, not only the last
  ``max_history``: the items the scorer excludes.

These are the rules of ``lime_model.data.build_sequences`` (training and ``lime-rank evaluate``):
the same duplicates dropped, the same order, the same seen items (DESIGN.md §1).

``events_on_ds`` counts the valid events of the day ``ds`` itself: zero means the
upstream day has not landed (or ``ds`` is wrong), and the job refuses to publish
histories that silently stop at an earlier day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError, SourceOrderUnavailableError
from pipelines.tables.input_contracts import EVENTS_COLUMNS
from pipelines.tables.schemas import check_schema
from pipelines.tables.spark_rows import first_row

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MAX_HISTORY_LIMIT = 100_000
EVENT_DATE = "event_date"  # optional string partition column of events (UTC day of ts)
# where a row of events was read from: ties of ts are ordered by these (with_source_order)
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"

@dataclass(frozen=True)
class HistoryConfig:
    ds: str
    max_history: int

    def __post_init__(self) -> None:
        try:
            dt.date.fromisoformat(self.ds)
        except ValueError:
            raise ConfigError(f"ds must be YYYY-MM-DD, got {self.ds!r}") from None
        if not 1 <= self.max_history <= MAX_HISTORY_LIMIT:
            raise ConfigError(f"max_history must be in [1, {MAX_HISTORY_LIMIT}], got {self.max_history}")

    @property
    def end_exclusive(self) -> str:
        """First instant after ``ds`` (UTC), as a timestamp literal."""
        return f"{dt.date.fromisoformat(self.ds) + dt.timedelta(days=1)} 00:00:00"

    @property
    def start(self) -> str:
        """First instant of ``ds`` (UTC), as a timestamp literal."""
        return f"{self.ds} 00:00:00"


def check_events_schema(events: DataFrame) -> None:
    check_schema("events", events.schema, EVENTS_COLUMNS, allow_extra=True)


def with_source_order(events: DataFrame) -> DataFrame:
    """``events`` (a table read) plus each row's source position: ``source_file`` (the data file's
    path) and ``source_row`` (the row's index in that file).

    Events with equal ``ts`` keep this order, as training and evaluation keep the file order of
    the interactions they read.  Across files the order is the files' paths (deterministic; for a
    table partitioned by ``event_date``, the older day first).  Spark's hidden ``_metadata``
    column gives both, but only on the file read itself (a Union such as :func:`prune_events`
    hides it): call this on the read, before pruning."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    if not events.inputFiles():  # a read of no file (an empty table) has no row to order
        return events.select("*", F.lit(None).cast("string").alias(SOURCE_FILE),
                             F.lit(None).cast("long").alias(SOURCE_ROW))
    try:
        return events.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE),
                             F.col("_metadata.row_index").alias(SOURCE_ROW))
    except AnalysisException as exc:
        raise SourceOrderUnavailableError(
            "table 'events': this read has no _metadata.file_path/_metadata.row_index column, so events "
            "with equal ts would have no defined order"
        ) from exc


def is_date_partitioned(events: DataFrame) -> bool:
    return EVENT_DATE in events.columns and events.schema[EVENT_DATE].dataType.simpleString() == "string"


def prune_events(events: DataFrame, ds: str) -> DataFrame:
    """The rows of a date-partitioned ``events`` table that can matter for ``ds``: every row filed
    under ``event_date <= ds``, plus the rows of later partitions whose ``ts`` is on or before
    ``ds`` (or null).

    Upstreams file late events under their arrival day, so ``event_date`` bounds nothing: pruning
    the later partitions outright dropped such events.  A margin of days would only make that
    rarer.  The filter on ``ts`` is a plain data filter, so Parquet row-group statistics (and
    Delta's file statistics on delta-spark) skip the later partitions' data without decoding it;
    the histories equal an unpruned read's.  The rows not read are counted by
    :func:`with_unread_later_rows`."""
    from pyspark.sql import functions as F

    if not is_date_partitioned(events):
        return events
    end = F.to_timestamp(F.lit(HistoryConfig(ds=ds, max_history=1).end_exclusive))
    filed_by_ds = events.where(F.col(EVENT_DATE) <= F.lit(ds))
    filed_later = events.where(F.col(EVENT_DATE) > F.lit(ds)).where(F.col("ts").isNull() | (F.col("ts") < end))
    return filed_by_ds.unionByName(filed_later)


def with_unread_later_rows(drops: Mapping[str, int], later_dated_rows: int) -> dict[str, int]:
    """The counts of a :func:`prune_events` read as an unpruned read gives them: the rows of later
    partitions that were not read (``later_dated_rows`` from the table log, minus those read) had a
    ``ts`` after ``ds``, so they count as read and as ``events_after_ds``.  (Unlike an unpruned read,
    such a row with a null or negative id counts as after ``ds`` rather than as a bad id.)"""
    unread = later_dated_rows - drops["later_dated_rows"]
    return {**drops, "events_read": drops["events_read"] + unread,
            "events_after_ds": drops["events_after_ds"] + unread, "later_dated_rows": later_dated_rows}


def flag_events(events: DataFrame, cfg: HistoryConfig) -> DataFrame:
    """(user_id bigint, item_id bigint, ts timestamp, source_file, source_row) plus boolean drop
    flags (and whether the row was filed under an ``event_date`` after ds).  ``events`` carries
    :func:`with_source_order`'s columns."""
    from pyspark.sql import functions as F

    end = F.to_timestamp(F.lit(cfg.end_exclusive))
    ts = F.col("ts").cast("timestamp")
    return events.select(
        F.col("user_id").cast("bigint").alias("user_id"),
        F.col("item_id").cast("bigint").alias("item_id"),
        ts.alias("ts"),
        SOURCE_FILE,
        SOURCE_ROW,
        (F.col(EVENT_DATE) > F.lit(cfg.ds) if is_date_partitioned(events) else F.lit(False)).alias("is_filed_later"),
    ).select(
        "*",
        (F.col("user_id").isNull() | F.col("item_id").isNull() | F.col("ts").isNull()).alias("is_null"),
        ((F.col("user_id") < 0) | (F.col("item_id") < 0)).alias("is_negative"),
        (F.col("ts") >= end).alias("is_future"),
        (F.col("ts") >= F.to_timestamp(F.lit(cfg.start))).alias("is_on_or_after_ds"),
    )


def drop_counts(flagged: DataFrame) -> dict[str, int]:
    """One pass: rows read, rows dropped for null ids, negative ids, events after ds, the
    valid events of the day ds itself (``events_on_ds``), the rows filed under an ``event_date``
    after ds (``later_dated_rows``) and the valid events up to ds among them (``late_filed_events``,
    kept)."""
    from pyspark.sql import functions as F

    valid = ~F.col("is_null") & ~F.col("is_negative")
    row = first_row(flagged.agg(
        F.count(F.lit(1)).alias("events_read"),
        F.sum(F.col("is_null").cast("long")).alias("null_ids"),
        F.sum((~F.col("is_null") & F.col("is_negative")).cast("long")).alias("negative_ids"),
        F.sum((valid & F.col("is_future")).cast("long")).alias("events_after_ds"),
        F.sum((valid & ~F.col("is_future") & F.col("is_on_or_after_ds")).cast("long")).alias("events_on_ds"),
        F.sum(F.col("is_filed_later").cast("long")).alias("later_dated_rows"),
        F.sum((valid & ~F.col("is_future") & F.col("is_filed_later")).cast("long")).alias("late_filed_events"),
    ), "the drop counts of events")
    return {k: int(row[k] or 0) for k in row.asDict()}


def distinct_in_source_order(valid: DataFrame) -> DataFrame:
    """(user_id, item_id, ts, tie_order): exact duplicate events (user, item, ts) kept once, the
    first in source order; ``tie_order`` ranks an event among the user's events with the same
    ``ts`` in source order (gaps where duplicates were dropped).

    Both windows are partitioned by (user_id, ts[, item_id]): one shuffle by (user_id, ts) serves
    both, as the dropped ``dropDuplicates`` shuffle did."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    source = (F.col(SOURCE_FILE).asc_nulls_first(), F.col(SOURCE_ROW).asc_nulls_first())
    same_instant = Window.partitionBy("user_id", "ts").orderBy(*source)
    same_event = Window.partitionBy("user_id", "ts", "item_id").orderBy(*source)
    ranked = valid.select("user_id", "item_id", "ts", F.row_number().over(same_instant).alias("tie_order"),
                          F.row_number().over(same_event).alias("copy"))
    return ranked.where(F.col("copy") == 1).drop("copy")


def user_event_lists(flagged: DataFrame, known_items: DataFrame, cfg: HistoryConfig) -> DataFrame:
    """Per user: deduplicated event count and the time-sorted known events.

    Columns: user_id, n_events (distinct valid events), first_ts (the earliest of them, known item
    or not), events array<struct<ts, tie_order, item_id>> (known items only, ascending by ts, then
    source order).
    """
    from pyspark.sql import functions as F

    valid = flagged.where(~F.col("is_null") & ~F.col("is_negative") & ~F.col("is_future"))
    distinct = distinct_in_source_order(valid)
    vocab = F.broadcast(known_items.select(F.col("item_id").cast("bigint")).distinct()
                        .withColumn("known", F.lit(True)))
    tagged = distinct.join(vocab, "item_id", "left")
    return tagged.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n_events"),
        F.min("ts").alias("first_ts"),
        F.sort_array(F.collect_list(F.when(F.col("known"), F.struct("ts", "tie_order", "item_id")))).alias("events"),
    )


def to_histories(per_user: DataFrame, cfg: HistoryConfig) -> DataFrame:
    """``user_histories`` rows (ds, user_id, item_ids, ts, n, seen_item_ids, n_seen, extracted_ds) from
    :func:`user_event_lists`: the last ``max_history`` events, and every distinct item of all of
    them (ascending ids)."""
    from pyspark.sql import functions as F

    size = F.size("events")
    last = F.slice("events", F.greatest(size - F.lit(cfg.max_history) + 1, F.lit(1)), cfg.max_history)
    seen = F.array_sort(F.array_distinct(F.transform("events", lambda e: e["item_id"])))
    return per_user.select(
        F.lit(cfg.ds).alias("ds"),
        "user_id",
        F.transform(last, lambda e: e["item_id"]).alias("item_ids"),
        F.transform(last, lambda e: e["ts"]).alias("ts"),
        F.size(last).cast("int").alias("n"),
        seen.alias("seen_item_ids"),
        F.size(seen).cast("int").alias("n_seen"),
        F.lit(cfg.ds).alias("extracted_ds"),
    )


def kept_counts(per_user: DataFrame, cfg: HistoryConfig) -> dict[str, int]:
    """One pass over the per-user lists: distinct events, known events, truncation, users."""
    from pyspark.sql import functions as F

    size = F.size("events")
    row = first_row(per_user.agg(
        F.sum("n_events").alias("distinct_events"),
        F.sum(size).alias("known_events"),
        F.sum(F.greatest(size - F.lit(cfg.max_history), F.lit(0))).alias("truncated_events"),
        F.count(F.lit(1)).alias("users"),
        F.sum((size == 0).cast("long")).alias("users_without_known_items"),
    ), "the counts of the per-user event lists")
    return {k: int(row[k] or 0) for k in row.asDict()}
