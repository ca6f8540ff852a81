"""Rolling a partition back (pipelines/tables/maintenance.py): only where re-adding old files is exact."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.table import TableFeatures

from pipelines.errors import UnsupportedOnEngineError, UnsupportedTableFeatureError
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.delta_spark import DeltaSparkStore
from pipelines.tables.maintenance import rollback_partition
from pipelines.tables.schemas import RECOMMENDATIONS
from pipelines.tables.store import WriteRequest


def recs(ds: str, users: range, score: float = 1.0) -> pa.Table:
    n = len(users)
    return pa.table({
        "ds": [ds] * n, "user_id": list(users), "rank": [1] * n, "item_id": [u * 10 for u in users],
        "score": [score + u for u in users], "model_version": ["v1"] * n, "source": ["model"] * n,
    }, schema=RECOMMENDATIONS.schema)


def two_runs_of_one_day(store: DeltaRsStore) -> None:
    """Version 0: the good run of 2024-01-01; version 1: a bad run replaced it."""
    store.write_arrow(recs("2024-01-01", range(3)), WriteRequest(RECOMMENDATIONS, "append", "good"))
    store.write_arrow(recs("2024-01-01", range(2), score=-9.0),
                      WriteRequest(RECOMMENDATIONS, "overwrite", "bad", partition={"ds": "2024-01-01"}))


def test_rollback_restores_the_partition_of_a_plain_table(tmp_path: Path) -> None:
    store = DeltaRsStore(None, tmp_path)
    two_runs_of_one_day(store)
    result = rollback_partition(store, RECOMMENDATIONS, {"ds": "2024-01-01"}, 0)
    assert (result.version, result.rows) == (2, 3)


def test_rollback_refuses_a_table_with_deletion_vectors(tmp_path: Path) -> None:
    """Old add actions may carry deletion vectors: re-adding their files bare revives deleted rows."""
    store = DeltaRsStore(None, tmp_path)
    two_runs_of_one_day(store)
    DeltaTable(store.uri(RECOMMENDATIONS.name)).alter.add_feature(
        [TableFeatures.DeletionVectors], allow_protocol_versions_increase=True)
    before = DeltaTable(store.uri(RECOMMENDATIONS.name)).version()
    with pytest.raises(UnsupportedTableFeatureError, match=r"deletionVectors"):
        rollback_partition(store, RECOMMENDATIONS, {"ds": "2024-01-01"}, 0)
    assert DeltaTable(store.uri(RECOMMENDATIONS.name)).version() == before  # nothing committed


def column_mapped_recommendations(root: Path) -> None:
    """A recommendations table whose files name their columns by physical ids (column mapping)."""
    uri = str(root / RECOMMENDATIONS.name)
    write_deltalake(uri, recs("2024-01-01", range(3)), partition_by=["ds"],
                    configuration={"delta.columnMapping.mode": "name"})
    write_deltalake(uri, recs("2024-01-01", range(2), score=-9.0), mode="overwrite",
                    predicate="ds = '2024-01-01'")


def test_rollback_refuses_a_table_with_column_mapping(tmp_path: Path) -> None:
    column_mapped_recommendations(tmp_path)
    with pytest.raises(UnsupportedTableFeatureError, match=r"column mapping"):
        rollback_partition(DeltaRsStore(None, tmp_path), RECOMMENDATIONS, {"ds": "2024-01-01"}, 0)


def test_file_list_reads_refuse_a_table_with_column_mapping(tmp_path: Path) -> None:
    """Reader version 2 lists no reader features: the mode in the table's configuration tells."""
    column_mapped_recommendations(tmp_path)
    with pytest.raises(UnsupportedTableFeatureError, match=r"column mapping"):
        DeltaRsStore(None, tmp_path).file_uris(RECOMMENDATIONS)


def test_rollback_on_the_delta_spark_engine_is_refused_with_its_own_error(tmp_path: Path) -> None:
    store = DeltaSparkStore(None, tmp_path)  # type: ignore[arg-type]  # refused before any Spark call
    with pytest.raises(UnsupportedOnEngineError, match=r"RESTORE .* every other partition"):
        rollback_partition(store, RECOMMENDATIONS, {"ds": "2024-01-01"}, 0)


def test_rollback_cli_refuses_a_delta_spark_lakehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from jobs.rollback import main

    store = DeltaRsStore(None, tmp_path)
    two_runs_of_one_day(store)
    monkeypatch.setenv("LIME_RANK_TABLE_ENGINE", "delta-spark")
    code = main(["--lakehouse", str(tmp_path), "--table", "recommendations", "--ds", "2024-01-01",
                 "--to-version", "0"])
    assert code != 0 and "UnsupportedOnEngineError" in caplog.text
    assert DeltaTable(store.uri(RECOMMENDATIONS.name)).version() == 1  # nothing committed
