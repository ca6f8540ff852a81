"""Commits and log reads of the delta-rs table layer that need no Spark session."""

from __future__ import annotations

from pathlib import Path

import deltalake.transaction
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import RECOMMENDATIONS
from pipelines.tables.store import WriteRequest, normalised_uri


def recs(ds: str, users: range) -> pa.Table:
    n = len(users)
    return pa.table({
        "ds": [ds] * n, "user_id": list(users), "rank": [1] * n, "item_id": [u * 10 for u in users],
        "score": [1.0 + u for u in users], "model_version": ["v1"] * n, "source": ["model"] * n,
    }, schema=RECOMMENDATIONS.schema)


def another_writer_appends(uri: str) -> None:
    write_deltalake(uri, recs("2024-02-01", range(100, 102)), mode="append", partition_by=["ds"])


def test_commit_reports_its_own_version_when_another_writer_commits_right_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DeltaRsStore(None, tmp_path)
    uri = store.uri(RECOMMENDATIONS.name)
    store.write_arrow(recs("2024-01-01", range(3)), WriteRequest(RECOMMENDATIONS, "append", "first"))  # version 0
    commit = DeltaTable.create_write_transaction

    def commit_then_race(self: DeltaTable, *args: object, **kwargs: object) -> None:
        commit(self, *args, **kwargs)
        another_writer_appends(uri)  # lands between our commit and anything we read back

    monkeypatch.setattr(DeltaTable, "create_write_transaction", commit_then_race)
    result = store.write_arrow(recs("2024-01-02", range(3, 5)), WriteRequest(RECOMMENDATIONS, "append", "mine"))
    assert DeltaTable(uri).version() == 2  # the other writer's commit
    assert (result.version, result.rows, result.files) == (1, 2, 1)
    assert DeltaTable(uri).history()[1]["lime_rank.app_id"] == "mine"  # version 1 is ours indeed


def test_table_creation_reports_version_0_when_another_writer_commits_right_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DeltaRsStore(None, tmp_path)
    uri = store.uri(RECOMMENDATIONS.name)
    create = deltalake.transaction.create_table_with_add_actions

    def create_then_race(*args: object, **kwargs: object) -> None:
        create(*args, **kwargs)
        another_writer_appends(uri)

    monkeypatch.setattr(deltalake.transaction, "create_table_with_add_actions", create_then_race)
    result = store.write_arrow(recs("2024-01-01", range(3)), WriteRequest(RECOMMENDATIONS, "append", "mine"))
    assert (DeltaTable(uri).version(), result.version) == (1, 0)


def events_table(root: Path) -> None:
    """Two partitions; one value needs percent-encoding in the Delta log's paths."""
    data = pa.table({"user_id": [1, 2, 3], "event_date": ["2024-01-01", "2024-01-01", "late 2024%"]})
    write_deltalake(str(root / "events"), data, partition_by=["event_date"])


@pytest.mark.parametrize("spelling", ["file://{root}", "file://{root}/", "file://{parent}/./{name}", "{root}/"])
def test_count_rows_does_not_depend_on_how_the_root_is_spelled(tmp_path: Path, spelling: str) -> None:
    root = tmp_path / "lake"
    events_table(root)
    store = DeltaRsStore(None, spelling.format(root=root, parent=tmp_path, name="lake"))
    assert store.count_rows("events", [("event_date", "=", "2024-01-01")]) == 2
    assert store.count_rows("events", [("event_date", ">", "2024-01-01")]) == 1


def test_count_rows_of_a_partition_value_that_the_log_percent_encodes(tmp_path: Path) -> None:
    events_table(tmp_path)
    assert DeltaRsStore(None, tmp_path).count_rows("events", [("event_date", "=", "late 2024%")]) == 1


@pytest.mark.parametrize(("uri", "want"), [
    ("file:///lake/./events/", "/lake/events"), ("/lake//events", "/lake/events"),
    ("s3://bucket/lake/./events/", "s3://bucket/lake/events"),
])
def test_normalised_uri_has_one_spelling_per_location(uri: str, want: str) -> None:
    assert normalised_uri(uri) == want
