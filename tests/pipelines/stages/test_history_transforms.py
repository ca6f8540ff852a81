"""extract_histories rules on tiny inline data: cut-off, dedupe, unknown items, ties, truncation, seen items."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.errors import ConfigError, SchemaMismatchError
from pipelines.stages import history_transforms as h
from pipelines.tables.store import WriteRequest

pytestmark = pytest.mark.spark

DS = "2024-03-10"


def ts(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, minute, tzinfo=dt.UTC)


def in_source_order(spark, rows, schema: str = "user_id bigint, item_id bigint, ts timestamp"):
    """``rows`` as events read from one data file in this order (with_source_order's columns)."""
    placed = [(*row, "part-0.parquet", i) for i, row in enumerate(rows)]
    return spark.createDataFrame(placed, f"{schema}, {h.SOURCE_FILE} string, {h.SOURCE_ROW} bigint")


def run(spark, rows, max_history: int = 3, known=(10, 11, 12, 13, 14)):
    events = in_source_order(spark, rows)
    vocab = spark.createDataFrame([(i,) for i in known], "item_id bigint")
    cfg = h.HistoryConfig(ds=DS, max_history=max_history)
    flagged = h.flag_events(events, cfg)
    per_user = h.user_event_lists(flagged, vocab, cfg)
    out = {r.user_id: r for r in h.to_histories(per_user, cfg).collect()}
    return out, h.drop_counts(flagged), h.kept_counts(per_user, cfg)


def test_rules(spark) -> None:
    rows = [
        (1, 10, ts(1)), (1, 11, ts(2)), (1, 11, ts(2)),  # exact duplicate
        (1, 99, ts(3)),  # unknown item
        (1, 13, ts(4, 5)), (1, 12, ts(4, 5)),  # same instant: source order, not item id order
        (1, 14, ts(10, 23, 59)),  # last minute of ds: kept
        (1, 10, ts(11)),  # after ds: dropped
        (2, None, ts(1)), (-5, 10, ts(1)), (2, 10, None),  # null / negative
        (3, 98, ts(2)), (3, 97, ts(3)),  # only unknown items: kept, empty history
    ]
    out, drops, kept = run(spark, rows)
    assert sorted(out) == [1, 3]
    assert out[1].item_ids == [13, 12, 14]  # last 3 by ts, ties in source order; 10 and 11 truncated
    assert out[1].ts[0].isoformat().startswith("2024-03-04T05:00")
    assert out[1].n == 3 and out[1].ds == DS
    assert (out[1].seen_item_ids, out[1].n_seen) == ([10, 11, 12, 13, 14], 5)  # truncated ones are seen too
    assert (out[3].item_ids, out[3].n, out[3].seen_item_ids, out[3].n_seen) == ([], 0, [], 0)
    assert drops == {"events_read": 13, "null_ids": 2, "negative_ids": 1, "events_after_ds": 1, "events_on_ds": 1,
                     "later_dated_rows": 0, "late_filed_events": 0}
    assert kept == {"distinct_events": 8, "known_events": 5, "truncated_events": 2, "users": 2,
                    "users_without_known_items": 1}


def test_long_history_keeps_the_newest_in_order(spark) -> None:
    rows = [(7, 10 + (i % 5), dt.datetime(2024, 3, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)) for i in range(5000)]
    out, _, kept = run(spark, rows, max_history=4)
    assert out[7].item_ids == [10 + (i % 5) for i in range(4996, 5000)]
    assert kept["truncated_events"] == 4996
    assert (out[7].seen_item_ids, out[7].n_seen) == ([10, 11, 12, 13, 14], 5)


def test_equal_timestamps_keep_source_order_and_a_duplicate_keeps_its_first_place(spark) -> None:
    """Ties of ts in (file path, row index) order, whatever the row order Spark reads them in; of an
    exact duplicate the first copy in that order stays (lime_model's drop_duplicates keeps the first)."""
    t = ts(5)
    placed = [  # (user, item, ts, file, row)
        (5, 13, t, "event_date=2024-03-05/b.parquet", 0),
        (5, 11, t, "event_date=2024-03-05/a.parquet", 1),
        (5, 14, t, "event_date=2024-03-05/a.parquet", 0),
        (5, 11, t, "event_date=2024-03-05/b.parquet", 1),  # the later copy of a.parquet row 1
        (5, 10, ts(4), "event_date=2024-03-05/b.parquet", 2),
    ]
    events = spark.createDataFrame(placed, f"user_id bigint, item_id bigint, ts timestamp, {h.SOURCE_FILE} string, "
                                           f"{h.SOURCE_ROW} bigint")
    cfg = h.HistoryConfig(ds=DS, max_history=10)
    vocab = spark.createDataFrame([(i,) for i in (10, 11, 12, 13, 14)], "item_id bigint")
    per_user = h.user_event_lists(h.flag_events(events, cfg), vocab, cfg)
    [row] = h.to_histories(per_user, cfg).collect()
    assert row.item_ids == [10, 14, 11, 13]
    assert h.kept_counts(per_user, cfg)["distinct_events"] == 4


def test_a_table_read_carries_each_rows_file_and_row_index(spark, store) -> None:
    """with_source_order on a lakehouse read: the data file's path and the row's index in it (an
    empty table: no file, no row, null columns)."""
    import pyarrow as pa

    from pipelines.tables.schemas import EVENTS

    at = ts(5)
    table = pa.table({"event_date": ["2024-03-05", "2024-03-05", "2024-03-06"], "user_id": [1, 1, 1],
                      "item_id": [12, 11, 13], "ts": pa.array([at, at, at], pa.timestamp("us", tz="UTC"))},
                     schema=EVENTS.schema)
    store.write_arrow(table, WriteRequest(EVENTS, "overwrite", "events"))
    read = h.with_source_order(store.read_table("events"))
    rows = sorted(read.select("item_id", h.SOURCE_FILE, h.SOURCE_ROW).collect(), key=lambda r: r.item_id)
    assert [(r.item_id, r[h.SOURCE_ROW]) for r in rows] == [(11, 1), (12, 0), (13, 0)]
    assert "event_date=2024-03-05/" in rows[0][h.SOURCE_FILE] and "event_date=2024-03-06/" in rows[2][h.SOURCE_FILE]
    no_files = h.with_source_order(spark.createDataFrame([], EVENTS.spark_schema))
    assert no_files.columns[-2:] == [h.SOURCE_FILE, h.SOURCE_ROW] and no_files.count() == 0


def test_missing_or_retyped_columns_are_named(spark) -> None:
    df = spark.createDataFrame([(1, "x", 3)], "uid bigint, item_id string, ts int")
    with pytest.raises(SchemaMismatchError, match=r"events.*missing column\(s\) \['user_id'\].*'item_id' has type "
                                                  r"string.*'ts' has type int"):
        h.check_events_schema(df)


@pytest.mark.parametrize(("ds", "max_history", "match"), [
    ("2024-13-01", 5, "ds must be"), ("yesterday", 5, "ds must be"), (DS, 0, "max_history"),
])
def test_config_is_validated(ds: str, max_history: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        h.HistoryConfig(ds=ds, max_history=max_history)


def test_event_on_or_before_ds_filed_under_a_later_event_date_is_kept_as_in_an_unpruned_read(spark) -> None:
    """Upstream files late events under their arrival day: pruning later ``event_date`` partitions
    must not drop an event whose ``ts`` is on or before ``ds`` (nor count it as after ds)."""
    rows = [
        ("2024-03-10", 1, 10, ts(10, 5)),
        ("2024-03-11", 1, 11, ts(10, 23)),  # on ds, filed the next day
        ("2024-03-12", 1, 12, ts(9)),  # before ds, filed two days later
        ("2024-03-11", 1, 13, ts(11, 1)),  # after ds
        ("2024-03-11", 2, 14, ts(11, 2)),  # after ds: user 2 has no event up to ds
        ("2024-03-12", 3, None, None),  # null ts in a later partition: a null-id drop either way
    ]
    events = in_source_order(spark, rows, "event_date string, user_id bigint, item_id bigint, ts timestamp")
    cfg = h.HistoryConfig(ds=DS, max_history=5)
    vocab = spark.createDataFrame([(i,) for i in (10, 11, 12, 13, 14)], "item_id bigint")

    def extract(source):
        flagged = h.flag_events(source, cfg)
        per_user = h.user_event_lists(flagged, vocab, cfg)
        return {r.user_id: r.item_ids for r in h.to_histories(per_user, cfg).collect()}, h.drop_counts(flagged)

    pruned, pruned_drops = extract(h.prune_events(events, DS))
    unpruned, unpruned_drops = extract(events)
    assert pruned == unpruned == {1: [12, 10, 11]}
    later_rows = 5  # every row of the partitions after ds, as the table log counts them
    assert h.with_unread_later_rows(pruned_drops, later_rows) == {**unpruned_drops, "late_filed_events": 2}
