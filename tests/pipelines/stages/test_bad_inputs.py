"""The bad-input matrix (docs/operations.md, "Bad inputs"): every malformed input either fails
with its own error class, a message naming the table, column and value, and nothing written
(output table versions unchanged; only the failed run's audit row), or gets a documented
handling whose counts land in the run_audit row.

One hand-made lakehouse (every counted anomaly at once, exact counts known) is run through
the four stages once; each error case copies it, breaks one input and runs one stage.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable, write_deltalake

from lime_model.errors import (
    CheckpointCorruptError,
    CheckpointNaNError,
    CheckpointNotFoundError,
)
from pipelines.errors import (
    ConfigError,
    EmptyCatalogueError,
    ModelVersionMismatchError,
    NonFiniteValueError,
    PartitionNotFoundError,
    SchemaMismatchError,
    TableNotFoundError,
    TopKTooLargeError,
    UnsupportedModelError,
)
from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.tables.audit import read_audit
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import CANDIDATE_LINK_WEIGHTS, ITEMS, USER_CANDIDATES, USER_HISTORIES, USER_LINKS
from pipelines.tables.store import WriteRequest
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-01-03"
LATER = "2024-01-04"
MAX_HISTORY = 8
K = 5
KNOWN = np.arange(1000, 1025, dtype=np.int64)  # the model's vocabulary: 25 items
CATALOGUE = np.arange(1000, 1030, dtype=np.int64)  # items 1025..1029 are unknown to the model
LONG_USER = 100  # 100,000 events
DUP_USER = 101  # exact duplicate events
UNKNOWN_ONLY_USER = 102  # only items the model does not know: empty history
AFTER_DS_USER = 103  # only events after ds
MIXED_USER = 104  # one event before ds, one after ds filed in the ds partition
NULL_USER, NEGATIVE_USER = 105, 106
HUGE_USER = 2**62 + 1  # beyond float64's exact integers
UTC = dt.UTC
EVENTS_SCHEMA = pa.schema([("event_date", pa.string()), ("user_id", pa.int64()), ("item_id", pa.int64()),
                           ("ts", pa.timestamp("us", tz="UTC"))])


def at(day: int, seconds: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, tzinfo=UTC) + dt.timedelta(seconds=seconds)


def events_table() -> pa.Table:
    rows: list[tuple[str, int | None, int | None, dt.datetime | None]] = []

    def add(user: int | None, item: int | None, ts: dt.datetime | None, date: str | None = None) -> None:
        rows.append((date or ts.date().isoformat(), user, item, ts))  # type: ignore[union-attr]

    for user in range(1, 21):  # 20 ordinary users, 6 known items each, the last one on ds
        for j in range(6):
            add(user, int(KNOWN[(user * 7 + 3 * j) % 25]), at(1, user * 60 + j * 36_000))
    add(1, 1027, at(3, 3600))  # in the catalogue, unknown to the model
    for k in range(4):
        add(DUP_USER, 1001 + k, at(2, 36_000 + 60 * k))
    for k in range(3):
        add(DUP_USER, 1001 + k, at(2, 36_000 + 60 * k))  # exact duplicates
    add(DUP_USER, 1001, at(2, 43_200))  # same item again later: a real event, kept
    add(UNKNOWN_ONLY_USER, 1026, at(2, 1000))
    add(UNKNOWN_ONLY_USER, 999_999, at(2, 2000))
    add(AFTER_DS_USER, 1000, at(4, 100))
    add(AFTER_DS_USER, 1001, at(4, 200))
    add(MIXED_USER, 1005, at(2, 28_800))
    add(MIXED_USER, 1006, at(4, 3600), date=DS)  # after ds although the upstream filed it under ds
    add(None, 1000, at(3))
    add(NULL_USER, None, at(3))
    add(NULL_USER, 1000, None, date=DS)
    add(-7, 1000, at(3))
    add(NEGATIVE_USER, -3, at(3))
    add(HUGE_USER, 1010, at(3, 100))
    add(HUGE_USER, 1011, at(3, 200))
    small = pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, r, strict=True)) for r in rows], schema=EVENTS_SCHEMA)
    seconds = np.arange(100_000, dtype=np.int64)  # one event per second from 2024-01-01 00:00
    micros = (np.datetime64("2024-01-01T00:00:00", "us") + seconds * 1_000_000).astype("datetime64[us]")
    long = pa.table({
        "event_date": pa.array(micros.astype("datetime64[D]").astype(str)),
        "user_id": pa.array(np.full(100_000, LONG_USER, np.int64)),
        "item_id": pa.array(KNOWN[seconds % 25]),
        "ts": pa.array(micros).cast(pa.timestamp("us", tz="UTC")),
    }, schema=EVENTS_SCHEMA)
    return pa.concat_tables([small, long])


def items_table() -> pa.Table:
    ids = [*CATALOGUE.tolist(), None, 1000]  # a null id and a duplicate row
    return pa.table({"item_id": pa.array(ids, pa.int64()), "title": [f"item {i}" for i in ids]})


@dataclass(frozen=True)
class World:
    root: Path
    store: DeltaRsStore
    ckpt: Path
    other_ckpt: Path  # same vocabulary, other weights: another model_version
    version: str
    other_version: str
    metrics: dict[str, dict[str, object]]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    lake = root / "lakehouse"
    write_deltalake(str(lake / "events"), events_table(), partition_by=["event_date"])
    write_deltalake(str(lake / "items"), items_table())
    ckpt, other = root / "model.ckpt", root / "other.ckpt"
    version = make_checkpoint(ckpt, KNOWN, max_history=MAX_HISTORY)
    other_version = make_checkpoint(other, KNOWN, max_history=MAX_HISTORY, seed=1)
    store = DeltaRsStore(spark, lake)
    ctx = RunContext.open(spark, store, DS, "good", str(ckpt))
    metrics = {
        "extract": extract_histories(ctx, MAX_HISTORY).metrics,
        "precompute": precompute_candidates(ctx, "cpu").metrics,
        "infer": infer_user_links(ctx, InferenceConfig(str(ckpt), version, device="cpu")).metrics,
        "score": score_topk(ctx, ScoringConfig(str(ckpt), version, top_k=K)).metrics,
    }
    return World(root, store, ckpt, other, version, other_version, metrics)


def table(world_or_store: World | DeltaRsStore, name: str) -> list[dict]:
    store = world_or_store.store if isinstance(world_or_store, World) else world_or_store
    return DeltaTable(store.uri(name)).to_pyarrow_table().to_pylist()


def histories(world: World) -> dict[int, dict]:
    return {r["user_id"]: r for r in table(world, "user_histories")}


def recommendations(world: World) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in sorted(table(world, "recommendations"), key=lambda r: (r["user_id"], r["rank"])):
        out.setdefault(row["user_id"], []).append(row)
    return out


# --- counted handling -------------------------------------------------------------------------
def test_null_ids_are_dropped_and_counted(world: World) -> None:
    assert world.metrics["extract"]["null_ids"] == 3  # null user, null item, null ts
    assert NULL_USER not in histories(world) and None not in histories(world)


def test_negative_ids_are_dropped_and_counted(world: World) -> None:
    assert world.metrics["extract"]["negative_ids"] == 2
    assert -7 not in histories(world) and NEGATIVE_USER not in histories(world)


def test_items_unknown_to_the_model_are_dropped_and_counted(world: World) -> None:
    assert world.metrics["extract"]["unknown_items"] == 3  # 1027 of user 1, 1026 and 999999 of user 102
    assert 1027 not in histories(world)[1]["item_ids"] and len(histories(world)[1]["item_ids"]) == 6
    recommended = {r["item_id"] for rows in recommendations(world).values() for r in rows}
    assert recommended <= set(KNOWN.tolist())


def test_user_with_an_empty_history_gets_the_popularity_list(world: World) -> None:
    assert world.metrics["extract"]["users_without_known_items"] == 1
    h = histories(world)[UNKNOWN_ONLY_USER]
    assert (h["n"], h["item_ids"]) == (0, [])
    recs = recommendations(world)[UNKNOWN_ONLY_USER]
    assert [r["source"] for r in recs] == ["popular"] * K
    assert [r["item_id"] for r in recs] == world.metrics["score"]["popular_items"]
    assert UNKNOWN_ONLY_USER not in {r["user_id"] for r in table(world, "user_links")}


def test_exact_duplicate_events_are_kept_once_and_counted(world: World) -> None:
    assert world.metrics["extract"]["duplicate_events"] == 3
    assert histories(world)[DUP_USER]["item_ids"] == [1001, 1002, 1003, 1004, 1001]


def test_100k_event_history_is_truncated_to_max_history_and_counted(world: World) -> None:
    assert world.metrics["extract"]["truncated_events"] == 100_000 - MAX_HISTORY
    h = histories(world)[LONG_USER]
    assert h["n"] == MAX_HISTORY
    assert h["item_ids"] == [int(KNOWN[i % 25]) for i in range(100_000 - MAX_HISTORY, 100_000)]
    # all 25 known items are among its 100,000 events: all are seen (not only the newest MAX_HISTORY),
    # so none is left to recommend, and the gate accepts a user without an eligible candidate
    assert (h["n_seen"], h["seen_item_ids"]) == (25, [int(i) for i in KNOWN])
    assert LONG_USER not in recommendations(world)
    assert world.metrics["score"]["quality"]["users_without_eligible_candidates"] == 1


def test_events_after_ds_are_dropped_and_counted(world: World) -> None:
    # two in the later partition (counted from the log, not read) + one filed under ds by the upstream
    assert world.metrics["extract"]["events_after_ds"] == 3
    assert AFTER_DS_USER not in histories(world)
    assert histories(world)[MIXED_USER]["item_ids"] == [1005]


def test_ids_beyond_2_pow_53_survive_exactly(world: World) -> None:
    assert histories(world)[HUGE_USER]["item_ids"] == [1010, 1011]
    assert HUGE_USER in {r["user_id"] for r in table(world, "user_links")}
    assert [r["source"] for r in recommendations(world)[HUGE_USER]] == ["model"] * K


def test_audit_totals_add_up(world: World) -> None:
    extract = world.metrics["extract"]
    assert extract["events_read"] == 100_142 and extract["events_on_ds"] == 23
    assert extract["users"] == 25 and extract["rows_written"] == 25
    assert extract["history_events"] == 136  # 120 + 8 + 5 + 1 + 2
    dropped = ("null_ids", "negative_ids", "events_after_ds", "duplicate_events", "unknown_items", "truncated_events")
    assert sum(int(extract[k]) for k in dropped) + extract["history_events"] == extract["events_read"]
    assert world.metrics["infer"]["users"] == world.metrics["infer"]["rows_written"] == 24
    assert world.metrics["score"]["rows_written"] == 24 * K  # LONG_USER has seen every candidate


def test_catalogue_rows_null_duplicate_or_unknown_to_the_model_are_counted(world: World) -> None:
    m = world.metrics["precompute"]
    assert (m["items_read"], m["items_null_or_duplicate"], m["items_unknown_to_model"], m["candidates"]) == (
        32, 2, 5, 25)
    assert sorted(r["item_id"] for r in table(world, "candidate_link_weights")) == KNOWN.tolist()


# --- errors: helpers --------------------------------------------------------------------------
def versions(store: DeltaRsStore) -> dict[str, int]:
    root = Path(store.root)
    if not root.exists():
        return {}
    return {p.name: DeltaTable(str(p)).version() for p in sorted(root.iterdir()) if DeltaTable.is_deltatable(str(p))}


@pytest.fixture
def lake(world: World, spark, tmp_path: Path) -> DeltaRsStore:
    """A private copy of the world's lakehouse, to break one input in."""
    shutil.copytree(world.store.root, tmp_path / "lakehouse")
    return DeltaRsStore(spark, tmp_path / "lakehouse")


def replace_table(store: DeltaRsStore, name: str, data: pa.Table | None, partition_by: list[str] | None = None) -> None:
    """Another team's writer (or a bug) replaced ``name`` with ``data`` (None: the table is gone)."""
    shutil.rmtree(store.uri(name), ignore_errors=True)
    if data is not None:
        write_deltalake(store.uri(name), data, partition_by=partition_by)


def overwrite_table(store: DeltaRsStore, name: str, data: pa.Table) -> None:
    """Another team overwrote ``name`` in place with a new schema (a new version of the same table)."""
    write_deltalake(store.uri(name), data, mode="overwrite", schema_mode="overwrite")


def open_ctx(spark, store: DeltaRsStore, ckpt: Path, run_id: str = "bad", ds: str = DS) -> RunContext:
    return RunContext.open(spark, store, ds, run_id, str(ckpt))


def assert_nothing_written(store: DeltaRsStore, before: dict[str, int], error: type[Exception] | None,
                           ds: str = DS, run_id: str = "bad") -> None:
    """Output tables unchanged; run_audit holds the failed row of ``run_id`` (None: no audit row at all)."""
    after = versions(store)
    audit_before, audit_after = before.get("run_audit"), after.pop("run_audit", None)
    assert after == {k: v for k, v in before.items() if k != "run_audit"}
    rows = [r for r in read_audit(store, ds) if r["run_id"] == run_id]
    if error is None:
        assert audit_after == audit_before and rows == []
    else:
        assert audit_after == (audit_before or 0) + 1
        assert [r["status"] for r in rows] == ["failed"]
        assert str(rows[0]["metrics"]["error"]).startswith(f"{error.__name__}: ")


# --- errors: events -----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "match"), [
    ("drop ts", r"schema of table 'events' does not match: missing column\(s\) \['ts'\](?=\n|$)"),
    ("rename user_id", r"schema of table 'events' does not match: missing column\(s\) \['user_id'\](?=\n|$)"),
    ("retype item_id", r"schema of table 'events' does not match: column 'item_id' has type string, "
                       r"expected tinyint or smallint or int or bigint(?=\n|$)"),
], ids=["missing-column", "renamed-column", "retyped-column"])
def test_events_schema_drift_is_named(spark, world: World, lake: DeltaRsStore, change: str, match: str) -> None:
    events = events_table().slice(0, 200)
    if change == "drop ts":
        events = events.drop_columns(["ts"])
    elif change == "rename user_id":
        events = events.rename_columns(["event_date", "uid", "item_id", "ts"])
    else:
        events = events.set_column(2, "item_id", events.column("item_id").cast(pa.string()))
    replace_table(lake, "events", events, ["event_date"])
    before = versions(lake)
    with pytest.raises(SchemaMismatchError, match=match):
        extract_histories(open_ctx(spark, lake, world.ckpt), MAX_HISTORY)
    assert_nothing_written(lake, before, SchemaMismatchError)


def test_missing_events_table(spark, world: World, lake: DeltaRsStore) -> None:
    replace_table(lake, "events", None)
    before = versions(lake)
    with pytest.raises(TableNotFoundError, match=r"table 'events' does not exist \(no Delta log at .*/events\)"):
        extract_histories(open_ctx(spark, lake, world.ckpt), MAX_HISTORY)
    assert_nothing_written(lake, before, TableNotFoundError)


def test_ds_whose_events_have_not_landed_is_refused(spark, world: World, lake: DeltaRsStore) -> None:
    """Histories that silently stop at an earlier day must not be published as ds's."""
    before = versions(lake)
    with pytest.raises(PartitionNotFoundError, match=r"table 'events' has no rows in partition "
                                                     r"event_date=2024-02-01 \(no valid event on that day"):
        extract_histories(open_ctx(spark, lake, world.ckpt, ds="2024-02-01"), MAX_HISTORY)
    assert_nothing_written(lake, before, PartitionNotFoundError, ds="2024-02-01")


def test_ds_with_only_invalid_events_is_refused_after_the_scan(spark, world: World, lake: DeltaRsStore) -> None:
    """The partition exists but holds no valid event of that day: caught by the counting pass."""
    events = pa.Table.from_pylist([{"event_date": LATER, "user_id": None, "item_id": 1000, "ts": at(4)},
                                   {"event_date": "2024-01-02", "user_id": 1, "item_id": 1000, "ts": at(2)}],
                                  schema=EVENTS_SCHEMA)
    replace_table(lake, "events", events, ["event_date"])
    before = versions(lake)
    with pytest.raises(PartitionNotFoundError, match=r"table 'events' has no rows in partition event_date=2024-01-04"):
        extract_histories(open_ctx(spark, lake, world.ckpt, ds=LATER), MAX_HISTORY)
    assert_nothing_written(lake, before, PartitionNotFoundError, ds=LATER)


def test_invalid_ds_is_refused_before_any_work(spark, world: World, lake: DeltaRsStore) -> None:
    before = versions(lake)
    with pytest.raises(ConfigError, match=r"^ds must be a date YYYY-MM-DD, got '2024-02-30'$"):
        open_ctx(spark, lake, world.ckpt, ds="2024-02-30")
    assert versions(lake) == before


# --- errors: items --------------------------------------------------------------------------------
@pytest.mark.parametrize(("items", "error", "match"), [
    (pa.table({"id": pa.array([1000, 1001], pa.int64())}), SchemaMismatchError,
     r"schema of table 'items' does not match: missing column\(s\) \['item_id'\](?=\n|$)"),
    (pa.table({"item_id": ["1000", "1001"]}), SchemaMismatchError,
     r"schema of table 'items' does not match: column 'item_id' has type string, expected tinyint or smallint"),
    (pa.table({"item_id": pa.array([], pa.int64()), "title": pa.array([], pa.string())}), EmptyCatalogueError,
     r"table 'items' has 0 row\(s\), 0 distinct item_id\(s\), none of them in the vocabulary of model"),
    (pa.table({"item_id": pa.array([1025, 1026, 5], pa.int64())}), EmptyCatalogueError,
     r"table 'items' has 3 row\(s\), 3 distinct item_id\(s\), none of them in the vocabulary of model"),
], ids=["renamed-column", "retyped-column", "empty-catalogue", "catalogue-unknown-to-model"])
def test_bad_items_catalogue(spark, world: World, lake: DeltaRsStore, items: pa.Table, error: type[Exception],
                             match: str) -> None:
    overwrite_table(lake, "items", items)  # a new items version: the candidates must be rebuilt
    before = versions(lake)
    with pytest.raises(error, match=match):
        precompute_candidates(open_ctx(spark, lake, world.ckpt), "cpu")
    assert_nothing_written(lake, before, error)


def test_recreated_items_table_rebuilds_the_candidates(spark, world: World, lake: DeltaRsStore) -> None:
    """Dropped and re-created, items starts again at version 0: its table id tells the two apart."""
    cands = lake.version(CANDIDATE_LINK_WEIGHTS)
    replace_table(lake, "items", pa.table({"item_id": pa.array([1000, 1001, 1002], pa.int64())}))
    assert lake.version(ITEMS) == 0 == world.store.version(ITEMS)
    result = precompute_candidates(open_ctx(spark, lake, world.ckpt), "cpu")
    assert not result.skipped and result.metrics["candidates"] == 3
    assert lake.version(CANDIDATE_LINK_WEIGHTS) == cands + 1
    assert sorted(r["item_id"] for r in table(lake, "candidate_link_weights")) == [1000, 1001, 1002]


def test_missing_items_table(spark, world: World, lake: DeltaRsStore) -> None:
    replace_table(lake, "items", None)
    before = versions(lake)
    with pytest.raises(TableNotFoundError, match=r"table 'items' does not exist"):
        precompute_candidates(open_ctx(spark, lake, world.ckpt), "cpu")
    assert_nothing_written(lake, before, None)


# --- errors: candidate table --------------------------------------------------------------------
def corrupt_candidates(world: World, lake: DeltaRsStore, column: str, item: int, value: float,
                       cast: pa.DataType | None = None) -> None:
    cands = DeltaTable(world.store.uri("candidate_link_weights")).to_pyarrow_table()
    rows = cands.to_pylist()
    for row in rows:
        if row["item_id"] == item:
            row[column] = value if column == "bias" else [value, *row[column][1:]]
    data = pa.Table.from_pylist(rows, schema=cands.schema)
    if cast is not None:
        data = data.set_column(data.schema.get_field_index(column), column, data.column(column).cast(cast))
    replace_table(lake, "candidate_link_weights", data, ["model_version"])


@pytest.mark.parametrize(("column", "item", "value", "mode"), [
    ("link_weights", 1003, float("nan"), "broadcast"),
    ("bias", 1007, float("inf"), "sharded"),
], ids=["nan-broadcast", "inf-sharded"])
def test_non_finite_candidate_table(spark, world: World, lake: DeltaRsStore, column: str, item: int, value: float,
                                    mode: str) -> None:
    corrupt_candidates(world, lake, column, item, value)
    before = versions(lake)
    cfg = ScoringConfig(str(world.ckpt), world.version, top_k=K, candidate_mode=mode, shards=2)
    with pytest.raises(NonFiniteValueError, match=rf"table 'candidate_link_weights': column '{column}' holds "
                                                  rf"NaN/inf for item_id {item} \(1 item\(s\) affected\)"):
        score_topk(open_ctx(spark, lake, world.ckpt), cfg)
    assert_nothing_written(lake, before, NonFiniteValueError)


def test_candidate_table_retyped_column(spark, world: World, lake: DeltaRsStore) -> None:
    corrupt_candidates(world, lake, "bias", 1000, 0.5, cast=pa.float64())
    before = versions(lake)
    with pytest.raises(SchemaMismatchError, match=r"schema of table 'candidate_link_weights' does not match: "
                                                  r"column 'bias' has type double, expected float(?=\n|$)"):
        score_topk(open_ctx(spark, lake, world.ckpt), ScoringConfig(str(world.ckpt), world.version, top_k=K))
    assert_nothing_written(lake, before, SchemaMismatchError)


def test_candidate_table_without_this_model_version(spark, world: World, lake: DeltaRsStore) -> None:
    links = DeltaTable(lake.uri("user_links")).to_pyarrow_table()  # links as if inferred with the other model
    links = links.set_column(1, "model_version", pa.array([world.other_version] * links.num_rows))
    lake.write_arrow(links, WriteRequest(USER_LINKS, "overwrite", "other-model-links", partition={"ds": DS}))
    before = versions(lake)
    cfg = ScoringConfig(str(world.other_ckpt), world.other_version, top_k=K)
    with pytest.raises(ModelVersionMismatchError,
                       match=rf"table 'candidate_link_weights' has no rows for model_version {world.other_version} "
                             rf"\(it holds \['{world.version}'\]\); run precompute-candidates with this checkpoint"):
        score_topk(open_ctx(spark, lake, world.other_ckpt), cfg)
    assert_nothing_written(lake, before, ModelVersionMismatchError)


def test_top_k_larger_than_catalogue(spark, world: World, lake: DeltaRsStore) -> None:
    before = versions(lake)
    with pytest.raises(TopKTooLargeError, match=r"^top_k=26 exceeds the 25 candidate\(s\) in candidate_link_weights"):
        score_topk(open_ctx(spark, lake, world.ckpt), ScoringConfig(str(world.ckpt), world.version, top_k=26))
    assert_nothing_written(lake, before, TopKTooLargeError)


# --- errors: intermediate tables of the run ------------------------------------------------------
def test_user_links_of_another_model_version(spark, world: World, lake: DeltaRsStore) -> None:
    before = versions(lake)
    cfg = ScoringConfig(str(world.other_ckpt), world.other_version, top_k=K)
    with pytest.raises(ModelVersionMismatchError,
                       match=rf"table 'user_links' \(ds={DS}\) holds model_version \['{world.version}'\], but the "
                             rf"checkpoint and candidate_link_weights are {world.other_version}"):
        score_topk(open_ctx(spark, lake, world.other_ckpt), cfg)
    assert_nothing_written(lake, before, ModelVersionMismatchError)


def test_histories_extracted_with_another_vocabulary(spark, world: World, lake: DeltaRsStore) -> None:
    ts = [at(3)]
    lake.write_arrow(pa.table({"ds": [DS], "user_id": [1], "item_ids": [[1027]], "ts": [ts], "n": [1],
                               "seen_item_ids": [[1027]], "n_seen": [1], "extracted_ds": [DS]},
                              schema=USER_HISTORIES.schema),
                     WriteRequest(USER_HISTORIES, "overwrite", "foreign-histories", partition={"ds": DS}))
    before = versions(lake)
    with pytest.raises(ModelVersionMismatchError, match=r"user_histories holds item_id 1027, unknown to the model "
                                                        r"vocabulary"):
        infer_user_links(open_ctx(spark, lake, world.ckpt), InferenceConfig(str(world.ckpt), world.version,
                                                                                     device="cpu"))
    assert_nothing_written(lake, before, ModelVersionMismatchError)


def test_user_histories_of_an_older_schema_are_refused_with_what_to_do(spark, world: World,
                                                                       lake: DeltaRsStore) -> None:
    """user_histories written before seen_item_ids/n_seen and extracted_ds existed: derived data, so
    the next extract refuses it (before scanning events) and says to drop and rebuild it; so does a write."""
    old = pa.schema([f for f in USER_HISTORIES.schema if f.name not in ("seen_item_ids", "n_seen", "extracted_ds")])
    shutil.rmtree(lake.uri("user_histories"))
    write_deltalake(lake.uri("user_histories"), pa.table({"ds": [DS], "user_id": [1], "item_ids": [[1027]],
                                                          "ts": [[at(3)]], "n": [1]}, schema=old),
                    partition_by=["ds"])
    before = versions(lake)
    hint = (r"missing column\(s\) \['extracted_ds', 'n_seen', 'seen_item_ids'\]; user_histories is derived data: "
            r"drop the table \(delete its folder\) and re-run extract-histories")
    with pytest.raises(SchemaMismatchError, match=hint):
        extract_histories(open_ctx(spark, lake, world.ckpt), MAX_HISTORY)
    assert_nothing_written(lake, before, SchemaMismatchError)
    row = {"ds": [DS], "user_id": [1], "item_ids": [[1027]], "ts": [[at(3)]], "n": [1], "seen_item_ids": [[1027]],
           "n_seen": [1], "extracted_ds": [DS]}
    with pytest.raises(SchemaMismatchError, match=hint):
        lake.write_arrow(pa.table(row, schema=USER_HISTORIES.schema),
                         WriteRequest(USER_HISTORIES, "overwrite", "after-upgrade", partition={"ds": DS}))


@pytest.mark.parametrize("stage", ["infer_user_links", "score_topk"])
def test_ds_without_histories(spark, world: World, lake: DeltaRsStore, stage: str) -> None:
    before = versions(lake)
    ctx = open_ctx(spark, lake, world.ckpt, ds="2024-01-02")
    with pytest.raises(PartitionNotFoundError, match=r"^table 'user_histories' has no rows in partition "
                                                     r"ds=2024-01-02; run extract-histories for ds=2024-01-02 "
                                                     r"first(?=\n|$)"):
        if stage == "infer_user_links":
            infer_user_links(ctx, InferenceConfig(str(world.ckpt), world.version, device="cpu"))
        else:
            score_topk(ctx, ScoringConfig(str(world.ckpt), world.version, top_k=K))
    assert_nothing_written(lake, before, PartitionNotFoundError, ds="2024-01-02")


def test_missing_user_links_partition(spark, world: World, lake: DeltaRsStore) -> None:
    replace_table(lake, "user_links", None)
    before = versions(lake)
    with pytest.raises(PartitionNotFoundError, match=rf"^table 'user_links' has no rows in partition ds={DS}; run "
                                                     rf"infer-user-links for ds={DS} first(?=\n|$)"):
        score_topk(open_ctx(spark, lake, world.ckpt), ScoringConfig(str(world.ckpt), world.version, top_k=K))
    assert_nothing_written(lake, before, PartitionNotFoundError)


def test_user_candidates_retyped_column(spark, world: World, lake: DeltaRsStore) -> None:
    bad = pa.table({"ds": [DS], "user_id": pa.array([1], pa.int64()), "item_ids": [["1000"]]})
    replace_table(lake, USER_CANDIDATES.name, bad, ["ds"])
    before = versions(lake)
    cfg = ScoringConfig(str(world.ckpt), world.version, top_k=K, per_user_candidates=True)
    with pytest.raises(SchemaMismatchError, match=r"schema of table 'user_candidates' does not match: column 'item_ids'"
                                                  r" has type list<item: string>, expected list<item: int64>"):
        score_topk(open_ctx(spark, lake, world.ckpt), cfg)
    assert_nothing_written(lake, before, SchemaMismatchError)


def test_nan_in_user_links(spark, world: World, lake: DeltaRsStore) -> None:
    """NaN links written by a foreign writer (our writer refuses them) are named, never scored."""
    original = DeltaTable(lake.uri("user_links")).to_pyarrow_table()
    links = original.to_pylist()
    links[0]["l_p"] = [float("nan")] * len(links[0]["l_p"])
    replace_table(lake, "user_links", pa.Table.from_pylist(links, schema=original.schema), ["ds"])
    before = versions(lake)
    with pytest.raises(NonFiniteValueError, match=rf"^table 'user_links': column 'l_p' holds NaN/inf for user_id "
                                                  rf"{links[0]['user_id']} \(1 user\(s\) of this batch "
                                                  r"affected\)(?=\n|$)"):
        score_topk(open_ctx(spark, lake, world.ckpt), ScoringConfig(str(world.ckpt), world.version, top_k=K))
    assert_nothing_written(lake, before, NonFiniteValueError)


# --- errors: checkpoint --------------------------------------------------------------------------
def test_nan_in_checkpoint(spark, world: World, lake: DeltaRsStore, tmp_path: Path) -> None:
    payload = torch.load(world.ckpt, weights_only=True)
    payload["state_dict"]["blocks.0.uqkv.weight"].view(-1)[3] = float("inf")
    torch.save(payload, tmp_path / "nan.ckpt")
    before = versions(lake)
    with pytest.raises(CheckpointNaNError, match=r"checkpoint .*nan.ckpt: NaN/inf in tensor 'blocks.0.uqkv.weight' "
                                                 r"\(1 of \d+ values\)"):
        open_ctx(spark, lake, tmp_path / "nan.ckpt")
    assert_nothing_written(lake, before, None)


def test_checkpoint_with_a_forged_model_version(spark, world: World, lake: DeltaRsStore, tmp_path: Path) -> None:
    payload = torch.load(world.ckpt, weights_only=True)
    payload["model_version"] = world.other_version  # e.g. a copy of the other model's metadata
    torch.save(payload, tmp_path / "forged.ckpt")
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint .*forged.ckpt: content hash {world.version} does "
                                                     rf"not match its model_version '{world.other_version}'"):
        open_ctx(spark, lake, tmp_path / "forged.ckpt")


def test_missing_checkpoint(spark, world: World, lake: DeltaRsStore, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint .*/absent.ckpt does not exist"):
        open_ctx(spark, lake, tmp_path / "absent.ckpt")


def test_checkpoint_of_a_model_without_links(spark, world: World, lake: DeltaRsStore, tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "sasrec.ckpt", KNOWN, model="sasrec", max_history=MAX_HISTORY)
    with pytest.raises(UnsupportedModelError, match=r"holds a 'sasrec' model; the nightly pipeline needs "
                                                    r"link embeddings"):
        open_ctx(spark, lake, tmp_path / "sasrec.ckpt")


def test_checkpoint_swapped_mid_run(spark, world: World, lake: DeltaRsStore, tmp_path: Path) -> None:
    """The driver loaded one model; the file is replaced before the executors load it."""
    path = tmp_path / "live.ckpt"
    shutil.copyfile(world.ckpt, path)
    ctx = open_ctx(spark, lake, path)
    shutil.copyfile(world.other_ckpt, path)
    before = versions(lake)
    with pytest.raises(ModelVersionMismatchError,
                       match=rf"checkpoint .*live.ckpt now holds model_version {world.other_version}, but this run "
                             rf"started with {world.version} \(was the file replaced during the run\?\)"):
        infer_user_links(ctx, InferenceConfig(str(path), ctx.model_version, device="cpu"))
    assert_nothing_written(lake, before, ModelVersionMismatchError)


# --- the CLI: one log line, exit code 1 ---------------------------------------------------------
def cli_error(caplog: pytest.LogCaptureFixture, argv: list[str]) -> str:
    from jobs.cli import main

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="lime-rank"):
        assert main(argv) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "lime-rank" and r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_truncated_checkpoint(world: World, lake: DeltaRsStore, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    data = world.ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    before = versions(lake)
    line = cli_error(caplog, ["infer-user-links", "--lakehouse", lake.root, "--ds", DS, "--checkpoint",
                              str(tmp_path / "cut.ckpt"), "--run-id", "bad"])
    assert line.startswith(f"{CheckpointCorruptError.__name__}: checkpoint {tmp_path / 'cut.ckpt'} is truncated "
                           "or unreadable")
    assert_nothing_written(lake, before, None)


def test_cli_run_refuses_top_k_larger_than_catalogue_before_stage_one(world: World, lake: DeltaRsStore,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    before = versions(lake)
    line = cli_error(caplog, ["run", "--lakehouse", lake.root, "--ds", DS, "--checkpoint", str(world.ckpt),
                              "--run-id", "bad", "--top-k", "26", "--master", "local[2]"])
    assert line == ("TopKTooLargeError: top_k=26 exceeds the 25 candidate(s) of table 'items' known to the model; "
                    "lower --top-k or grow the catalogue")
    assert_nothing_written(lake, before, None)


def test_cli_missing_lakehouse_creates_nothing(world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "typo" / "lakehouse"
    line = cli_error(caplog, ["extract-histories", "--lakehouse", str(missing), "--ds", DS, "--checkpoint",
                              str(world.ckpt), "--master", "local[2]"])
    assert line == (f"LakehouseNotFoundError: lakehouse '{missing}' does not exist or is not a folder; check "
                    "--lakehouse (only `lime-rank generate`/`load-movielens` create a lakehouse)")
    assert not (tmp_path / "typo").exists()


def test_cli_max_history_out_of_range(world: World, lake: DeltaRsStore, caplog: pytest.LogCaptureFixture) -> None:
    line = cli_error(caplog, ["extract-histories", "--lakehouse", lake.root, "--ds", DS, "--checkpoint",
                              str(world.ckpt), "--max-history", "100001"])
    assert line == "ConfigError: max_history must be in [1, 100000], got 100001"

