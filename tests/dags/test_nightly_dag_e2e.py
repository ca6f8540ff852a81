"""``airflow dags test lime_nightly_scoring`` end to end on a tiny synthetic lakehouse.

Real Airflow (SQLite metadata DB, no scheduler), real spark-submit of the five
jobs, a tiny random-weight LIME-XOR checkpoint
(``lime_model.synthetic.random_checkpoint``).  No Spark connection is defined,
so the tasks also prove the ``local[*]`` fallback.  A successful run with a conf override, its
Asset event and its report are checked under a running scheduler instead
(``tests/deploy/test_cluster_demo.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from pipelines.deploy.spark_standalone import SHORT_LIVED_JVM

pytestmark = [pytest.mark.slow, pytest.mark.spark]

DAG_ID = "lime_nightly_scoring"
DS = "2024-01-05"  # the last day of the generated events
# short-lived driver JVMs (the cluster demo's settings): the jobs here are tiny
SPARK_CONF = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
              "spark.driver.extraJavaOptions": SHORT_LIVED_JVM}


@dataclass(frozen=True)
class World:
    lakehouse: Path
    checkpoint: Path
    model_version: str
    env: Mapping[str, str]


@pytest.fixture(scope="module")
def world(spark: object, airflow_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> World:
    from jobs.cli import main as cli
    from lime_model.synthetic import random_checkpoint

    root = tmp_path_factory.mktemp("nightly-e2e")
    lakehouse = root / "lakehouse"
    assert cli(["generate", "--lakehouse", str(lakehouse), "--users", "200", "--items", "100",
                "--days", "5"]) == 0
    items = DeltaTable(str(lakehouse / "items")).to_pyarrow_table().column("item_id").to_numpy()
    checkpoint = root / "lime-xor.pt"
    version = random_checkpoint(checkpoint, np.sort(items), d_model=16, n_heads=2, n_links=4, n_layers=1,
                                max_history=50)
    env = {**airflow_db, "LIME_RANK_LAKEHOUSE": str(lakehouse), "LIME_RANK_CHECKPOINT": str(checkpoint),
           "LIME_RANK_DAG_RETRIES": "0", "LIME_RANK_SPARK_LOG_LEVEL": "ERROR",
           "LIME_RANK_SPARK_CONF": json.dumps(SPARK_CONF)}
    env.pop("AIRFLOW_CONN_SPARK_DEFAULT", None)
    return World(lakehouse, checkpoint, version, env)


def dags_test(world: World, conf: Mapping[str, object]) -> subprocess.CompletedProcess[str]:
    airflow = str(Path(world.env["PATH"].split(os.pathsep)[0]) / "airflow")
    return subprocess.run([airflow, "dags", "test", DAG_ID, DS, "--conf", json.dumps(conf)],
                          env=dict(world.env), capture_output=True, text=True, timeout=600)


def _tables(lakehouse: Path) -> dict[str, int]:
    tables = [p for p in lakehouse.iterdir() if DeltaTable.is_deltatable(str(p))]
    return {p.name: DeltaTable(str(p)).version() for p in tables}


@pytest.mark.parametrize("conf", [{"top_k": "ten"}, {"top_k": 0}])
def test_invalid_conf_fails_before_any_spark_work(world: World, conf: Mapping[str, object]) -> None:
    before = _tables(world.lakehouse)
    run = dags_test(world, conf)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "ParamValidationError: Invalid input for param top_k" in output
    assert "Spark-Submit cmd" not in output and "Task started" not in output
    assert _tables(world.lakehouse) == before


def test_a_dag_run_that_crashed_mid_way_resumes_without_double_work(world: World) -> None:
    """The driver of infer_user_links dies before its commit (fault hook); the DAG run fails.

    The on-call engineer clears the DAG run, and its tasks run again under the same Airflow
    run id (``airflow tasks test DAG TASK RUN_ID`` plays the scheduler): the stages committed
    before the crash do nothing, the others commit once, and the result is complete.
    """
    ds = "2024-01-04"  # a partition no other test writes
    airflow = str(Path(world.env["PATH"].split(os.pathsep)[0]) / "airflow")
    crash_env = {**world.env, "LIME_RANK_FAULT": "crash-before-commit:table=user_links"}
    crashed = subprocess.run([airflow, "dags", "test", DAG_ID, ds], env=crash_env, capture_output=True, text=True,
                             timeout=600)
    output = crashed.stdout + crashed.stderr
    assert crashed.returncode != 0 and "state=failed" in output, output[-6000:]
    assert "Spark connection 'spark_default' is not defined; running on local[*]" in output

    lake = world.lakehouse
    audit = DeltaTable(str(lake / "run_audit")).to_pandas(filters=[("ds", "=", ds)])
    [run_id] = audit.run_id.unique()
    assert set(audit.job) == {"extract_histories", "precompute_candidates"}  # the crash left no row
    links = str(lake / "user_links")  # the crash may have hit the table's first commit: then there is no table
    assert not DeltaTable.is_deltatable(links) or DeltaTable(links).to_pandas(filters=[("ds", "=", ds)]).empty
    before = _tables(lake)

    outputs = {}
    for task in ("extract_histories", "precompute_candidates", "infer_user_links", "score_topk",
                 "validate_publish"):
        rerun = subprocess.run([airflow, "tasks", "test", DAG_ID, task, run_id], env=dict(world.env),
                               capture_output=True, text=True, timeout=600)
        outputs[task] = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, (task, outputs[task][-6000:])
    assert "already committed; nothing to redo" in outputs["extract_histories"]
    assert "already committed; nothing to redo" in outputs["precompute_candidates"]
    assert "skipped without starting a Spark session" in outputs["precompute_candidates"]

    after = _tables(lake)
    # no double work: the stages committed before the crash wrote nothing new
    assert after["user_histories"] == before["user_histories"]
    assert after["candidate_link_weights"] == before["candidate_link_weights"]
    # the rest committed exactly once
    assert after["user_links"] == before.get("user_links", -1) + 1
    assert after["recommendations"] == before.get("recommendations", -1) + 1

    audit = DeltaTable(str(lake / "run_audit")).to_pandas(filters=[("ds", "=", ds)])
    assert set(audit.run_id) == {run_id}
    statuses = audit.groupby("job")["status"].apply(sorted).to_dict()
    assert statuses["extract_histories"] == ["skipped", "succeeded"]
    # skipped on resume; in the crashed run too when an earlier run built this model version
    assert len(statuses["precompute_candidates"]) == 2 and "skipped" in statuses["precompute_candidates"]
    assert statuses["infer_user_links"] == ["succeeded"]
    assert statuses["score_topk"] == ["succeeded"]
    assert statuses["validate_publish"] == ["published"]

    recs = DeltaTable(str(lake / "recommendations")).to_pandas(filters=[("ds", "=", ds)])
    users = DeltaTable(str(lake / "user_histories")).to_pandas(filters=[("ds", "=", ds)]).user_id
    assert set(recs.user_id) == set(users) and not recs.duplicated(["user_id", "rank"]).any()
