"""extract_histories rules on tiny inline data: cut-off, dedupe, unknown items, ties, truncation."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines import histories as h
from pipelines.errors import ConfigError, SchemaMismatchError

pytestmark = pytest.mark.spark

DS = "2024-03-10"


def ts(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, minute, tzinfo=dt.UTC)


def run(spark, rows, max_history: int = 3, known=(10, 11, 12, 13, 14)):
    events = spark.createDataFrame(rows, "user_id bigint, item_id bigint, ts timestamp")
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
        (1, 13, ts(4, 5)), (1, 12, ts(4, 5)),  # same instant: item id breaks the tie
        (1, 14, ts(10, 23, 59)),  # last minute of ds: kept
        (1, 10, ts(11)),  # after ds: dropped
        (2, None, ts(1)), (-5, 10, ts(1)), (2, 10, None),  # null / negative
        (3, 98, ts(2)), (3, 97, ts(3)),  # only unknown items: kept, empty history
    ]
    out, drops, kept = run(spark, rows)
    assert sorted(out) == [1, 3]
    assert out[1].item_ids == [12, 13, 14]  # last 3 by (ts, item_id); 10 and 11 truncated
    assert out[1].ts[0].isoformat().startswith("2024-03-04T05:00")
    assert out[1].n == 3 and out[1].ds == DS
    assert (out[3].item_ids, out[3].n) == ([], 0)
    assert drops == {"events_read": 13, "null_ids": 2, "negative_ids": 1, "events_after_ds": 1, "events_on_ds": 1,
                     "later_dated_rows": 0, "late_filed_events": 0}
    assert kept == {"distinct_events": 8, "known_events": 5, "truncated_events": 2, "users": 2,
                    "users_without_known_items": 1}


def test_long_history_keeps_the_newest_in_order(spark) -> None:
    rows = [(7, 10 + (i % 5), dt.datetime(2024, 3, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)) for i in range(5000)]
    out, _, kept = run(spark, rows, max_history=4)
    assert out[7].item_ids == [10 + (i % 5) for i in range(4996, 5000)]
    assert kept["truncated_events"] == 4996


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
    events = spark.createDataFrame(rows, "event_date string, user_id bigint, item_id bigint, ts timestamp")
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
