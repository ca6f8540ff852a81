"""One local Spark session for the whole test run (a JVM costs ~10 s to start); the cluster demo
started in the background at the session's start, its tests run last."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.background_demo import MODULE as CLUSTER_DEMO
from tests.deploy.background_demo import BackgroundDemo, start_demo

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster demo's tests last, so that the demo has the rest of the suite's time to run."""
    items.sort(key=lambda item: item.nodeid.startswith(CLUSTER_DEMO))  # stable: the others keep their order


@pytest.fixture(scope="session", autouse=True)
def cluster_demo(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundDemo | None]:
    """The demo ``test_cluster_demo.py`` reads, started before the first test when any of its tests
    is selected; stopped at the session's end if it still runs."""
    if not any(item.nodeid.startswith(CLUSTER_DEMO) for item in request.session.items):
        yield None
        return
    demo = start_demo(tmp_path_factory.mktemp("cluster-demo"))
    try:
        yield demo
    finally:
        demo.stop()
