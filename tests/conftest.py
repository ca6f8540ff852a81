"""One local Spark session for the whole test run (a JVM costs ~10 s to start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LIME_RANK_SPARK_LOG_LEVEL", "ERROR")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from pipelines.runtime.spark_session import SparkSettings, build_spark_session

    session = build_spark_session(
        SparkSettings(master="local[2]", app_name="lime-rank-tests", shuffle_partitions=4,
                      conf={"spark.default.parallelism": "4"})
    )
    yield session
    session.stop()


@pytest.fixture
def lakehouse(tmp_path: Path) -> Path:
    root = tmp_path / "lakehouse"
    root.mkdir()
    return root


@pytest.fixture
def store(spark: object, lakehouse: Path):
    from pipelines.tables.delta_rs import DeltaRsStore

    return DeltaRsStore(spark, lakehouse)  # type: ignore[arg-type]
