"""Session settings: embedded defaults, and GPU scheduling only where Spark has a scheduler."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipelines.errors import SparkConfigError
from pipelines.runtime.spark_session import GpuSettings, SparkSettings, build_conf, is_local_master


@pytest.fixture
def discovery_script(tmp_path: Path) -> str:
    script = tmp_path / "gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_embedded_default_is_local_star_utc_arrow_no_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    conf = build_conf(SparkSettings())
    assert conf["spark.master"] == "local[*]"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert conf["spark.ui.enabled"] == "false"
    assert not any(k.startswith("spark.executor.resource.gpu") for k in conf)


def test_spark_submit_master_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    conf = build_conf(SparkSettings())
    assert "spark.master" not in conf
    assert "spark.pyspark.python" not in conf  # the cluster's Python settings win
    assert build_conf(SparkSettings(master="yarn"))["spark.master"] == "yarn"


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local[4,2]"])
def test_gpu_under_local_master_is_refused(master: str, discovery_script: str) -> None:
    assert is_local_master(master)
    with pytest.raises(SparkConfigError, match="no resource scheduler"):
        SparkSettings(master=master, gpu=GpuSettings(discovery_script))


def test_gpu_on_local_cluster_configures_workers_executors_and_tasks(discovery_script: str) -> None:
    conf = build_conf(SparkSettings(master="local-cluster[2,1,1024]",
                                    gpu=GpuSettings(discovery_script, amount_per_task=0.5)))
    assert not is_local_master("local-cluster[2,1,1024]")
    assert conf["spark.worker.resource.gpu.amount"] == "1"
    assert conf["spark.worker.resource.gpu.discoveryScript"] == discovery_script
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.task.resource.gpu.amount"] == "0.5"


def test_gpu_settings_are_validated(tmp_path: Path, discovery_script: str) -> None:
    with pytest.raises(SparkConfigError, match="not an executable"):
        GpuSettings(str(tmp_path / "missing.sh"))
    with pytest.raises(SparkConfigError, match="amount_per_task"):
        GpuSettings(discovery_script, amount_per_task=2.0)
    assert os.access(discovery_script, os.X_OK)
