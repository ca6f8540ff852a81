"""The delta-spark engine's logic that needs no Delta jars (they cannot be downloaded here).

Commit results come from the table history Delta keeps (``DESCRIBE HISTORY``: version,
userMetadata, operationMetrics); partition filters become Column expressions or escaped SQL.
"""

from __future__ import annotations

import json

import pytest

from pipelines.errors import ConfigError, TableError
from pipelines.tables.delta_spark import HistoryEntry, commit_from_history, partition_condition, replace_where_sql


def entry(version: int, app_id: str | None, metrics: dict[str, str] | None = None) -> HistoryEntry:
    meta = None if app_id is None else json.dumps({"lime_rank.app_id": app_id, "lime_rank.stage": "x"})
    return HistoryEntry(version, meta, metrics or {})


def test_delta_spark_commit_reports_the_files_and_rows_delta_counted() -> None:
    history = [entry(8, "other-run", {"numFiles": "9", "numOutputRows": "900"}),  # a later writer
               entry(7, "mine", {"numFiles": "2", "numOutputRows": "10", "numOutputBytes": "4096"}),
               entry(6, None, {})]
    result = commit_from_history("recommendations", "mine", history)
    assert (result.version, result.files, result.rows, result.skipped) == (7, 2, 10, False)


def test_delta_spark_commit_without_metrics_reports_unknown_not_a_number() -> None:
    """spark.databricks.delta.history.metricsEnabled=false leaves operationMetrics empty."""
    result = commit_from_history("recommendations", "mine", [entry(3, "mine")])
    assert (result.version, result.files, result.rows) == (3, None, None)


def test_delta_spark_commit_missing_from_the_history_is_an_error() -> None:
    with pytest.raises(TableError, match=r"no commit of app id 'mine' in the history of table 'recommendations'"):
        commit_from_history("recommendations", "mine", [entry(3, "other-run"), entry(2, None)])


def test_history_entry_with_foreign_user_metadata_is_not_ours() -> None:
    foreign = HistoryEntry(4, "not json", {"numFiles": "1", "numOutputRows": "1"})
    assert commit_from_history("t", "mine", [foreign, entry(2, "mine")]).version == 2


HOSTILE = ["2024-01-01", "x' OR '1'='1", "it's", "back\\slash", "trail\\", "quote\\'d", "tick`s"]


@pytest.mark.spark
def test_partition_values_with_quotes_cannot_break_or_inject_delta_spark_predicates(spark) -> None:
    """Each predicate selects exactly the rows of its own value, whatever quotes it holds."""
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(v, i) for i, v in enumerate(HOSTILE)], "`d s` string, n int")
    for i, value in enumerate(HOSTILE):
        by_sql = df.where(F.expr(replace_where_sql({"d s": value}))).collect()
        by_column = df.where(partition_condition([("d s", "=", value)])).collect()
        assert [r.n for r in by_sql] == [r.n for r in by_column] == [i], value


def test_partition_filter_operators_are_a_closed_set() -> None:
    with pytest.raises(ConfigError, match=r"operator must be one of"):
        partition_condition([("ds", "= '1' OR 1=1 --", "x")])
