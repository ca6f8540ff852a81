"""GPU-partitioned inference on real separate executor JVMs (local-cluster) with fake GPUs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from pipelines.errors import ConfigError, GpuUnavailableError
from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.model_runtime import choose_device
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

REPO = Path(__file__).resolve().parents[3]


def test_device_choice() -> None:
    assert choose_device("auto", [], cuda_available=False) == "cpu"
    assert choose_device("auto", ["1"], cuda_available=True) == "cuda:1"
    assert choose_device("cpu", ["0"], cuda_available=True) == "cpu"
    assert choose_device("cuda", [], cuda_available=True) == "cuda:0"
    with pytest.raises(GpuUnavailableError, match="GPU 0 was assigned to this task but CUDA is not available"):
        choose_device("auto", ["0"], cuda_available=False)
    with pytest.raises(GpuUnavailableError, match="--inference-device cuda"):
        choose_device("cuda", [], cuda_available=False)
    with pytest.raises(ConfigError, match="inference device must be one of"):
        choose_device("tpu", [], cuda_available=False)


@pytest.mark.slow
@pytest.mark.spark
def test_local_cluster_tasks_use_their_assigned_gpu_and_match_local_run(spark, tmp_path: Path) -> None:
    script = tmp_path / "fake_gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    cfg = SyntheticConfig(users=300, items=120, days=5, seed=4, mean_events_per_user=8)
    store = DeltaRsStore(spark, tmp_path / "lakehouse")
    write_synthetic(None, store, cfg)
    ckpt = tmp_path / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items), max_history=16)
    ds = "2024-01-05"
    ctx = RunContext.open(spark, store, ds, "local-run", str(ckpt))
    extract_histories(ctx, 16)
    local = infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))

    out = tmp_path / "cluster.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.pipelines.cluster_inference", "--lakehouse", str(tmp_path / "lakehouse"),
         "--ds", ds, "--checkpoint", str(ckpt), "--run-id", "cluster-run", "--out", str(out),
         "--gpu-script", str(script)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["executors"] == 2
    tasks = report["metrics"]["tasks"]
    assert len(tasks) == 4
    assert all(t["gpus"] == ["0"] for t in tasks), tasks  # every task recorded the GPU Spark gave it
    assert report["metrics"]["gpus_assigned"] == ["0"]
    assert len({t["pid"] for t in tasks}) >= 2  # separate executor processes did the work
    assert all(t["model_loads_in_worker"] == 1 for t in tasks)  # loaded once per Python worker
    tokens = [t["tokens"] for t in tasks]
    assert max(tokens) - min(tokens) <= 16  # token-balanced: within one max history

    uri = store.uri("user_links")
    by_local = DeltaTable(uri, version=local.commit.version).to_pandas().sort_values("user_id")
    by_cluster = DeltaTable(uri, version=report["version"]).to_pandas().sort_values("user_id")
    assert len(by_local) == len(by_cluster) > 250
    pd.testing.assert_series_equal(by_local.user_id.reset_index(drop=True), by_cluster.user_id.reset_index(drop=True))
    for a, b in zip(by_local.l_p, by_cluster.l_p, strict=True):
        assert abs(a - b).max() < 1e-5
