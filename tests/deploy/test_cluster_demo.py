"""``lime-rank cluster-demo`` on tiny data: the DAGs under a running Airflow scheduler, the jobs on
a Spark standalone cluster (a master, two workers with one fake GPU each) whose executors run the
packed environment's Python; a worker is SIGKILLed during the first backfill run's inference.

One demo run (a subprocess, as ``make cluster-demo`` runs it) feeds every test of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

pytestmark = [pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
NIGHTLY, REFRESH = "lime_nightly_scoring", "lime_candidate_refresh"


@dataclass(frozen=True)
class Demo:
    out: Path
    summary: dict[str, Any]
    log: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    out = tmp_path_factory.mktemp("cluster-demo") / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIME_RANK_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "cluster-demo", "--out", str(out), "--users", "150", "--items", "80",
         "--days", "4", "--kill-worker-in-backfill"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return Demo(out, json.loads((out / "summary.json").read_text()), log)


def _runs(demo: Demo, dag_id: str, run_type: str) -> list[dict[str, Any]]:
    return [r for r in demo.summary["dag_runs"] if r["dag_id"] == dag_id and r["run_type"] == run_type]


def test_summary_has_exactly_the_documented_keys(demo: Demo) -> None:
    assert set(demo.summary) == {"spark_master", "lakehouse", "executors", "dag_runs", "tables"}
    assert demo.summary["spark_master"].startswith("spark://127.0.0.1:")
    assert demo.summary["lakehouse"] == str(demo.out / "lakehouse")


def test_executors_ran_on_both_workers_with_their_gpu_and_the_archive_python(demo: Demo) -> None:
    executors = demo.summary["executors"]
    assert len(executors) == 2
    assert len({e["worker_id"] for e in executors}) == 2
    assert all(e["host"] == "127.0.0.1" for e in executors)
    assert sorted(tuple(e["gpu_addresses"]) for e in executors) == [("0",), ("1",)]
    for e in executors:
        python = Path(e["python"])
        # <worker dir>/<app id>/<executor id>/environment/bin/python: the unpacked spark.archives copy
        assert python.parts[-3:] == ("environment", "bin", "python"), python
        assert python.is_relative_to(demo.out / "spark"), python
        assert python.parent.parent.parent.name == e["id"]


def test_executors_got_the_submitted_jvm_options_and_the_jobs_own(demo: Demo) -> None:
    launches = [line for log in (demo.out / "logs").glob("spark-worker-*.log")
                for line in log.read_text().splitlines() if "Launch command:" in line]
    assert launches
    assert all("-XX:TieredStopAtLevel=1" in line and "-Duser.timezone=UTC" in line for line in launches)


def test_the_scheduler_ran_the_nightly_run_the_asset_triggered_refresh_and_the_backfill(demo: Demo) -> None:
    nightly = _runs(demo, NIGHTLY, "scheduled")
    refresh = _runs(demo, REFRESH, "asset_triggered")
    backfill = _runs(demo, NIGHTLY, "backfill")
    assert [r["state"] for r in nightly] == ["success"]
    assert [r["state"] for r in refresh] == ["success"]
    assert [r["state"] for r in backfill] == ["success", "success"]
    days = sorted(r["logical_date"][:10] for r in nightly + backfill)
    assert len(set(days)) == 3


def test_recommendations_hold_one_complete_partition_per_day(demo: Demo) -> None:
    lakehouse = demo.out / "lakehouse"
    recs = DeltaTable(str(lakehouse / "recommendations")).to_pyarrow_table()
    days = sorted(r["logical_date"][:10] for r in demo.summary["dag_runs"]
                  if r["dag_id"] == NIGHTLY and r["run_type"] in ("scheduled", "backfill"))
    assert sorted(pc.unique(recs.column("ds")).to_pylist()) == days
    links = DeltaTable(str(lakehouse / "user_links")).to_pyarrow_table()
    for ds in days:
        day = recs.filter(pc.equal(recs.column("ds"), ds)).to_pandas()
        assert not day.duplicated(["user_id", "rank"]).any(), ds
        assert (day.groupby("user_id")["rank"].max() == day.groupby("user_id").size()).all(), ds
        users = links.filter(pc.equal(links.column("ds"), ds)).column("user_id").to_pylist()
        assert len(users) == len(set(users)), f"duplicate user_links rows on {ds}"
        assert set(day["user_id"]) >= set(users), f"users without recommendations on {ds}"
    assert demo.summary["tables"]["recommendations"] == DeltaTable(str(lakehouse / "recommendations")).version()


def test_a_worker_killed_during_inference_did_not_fail_the_backfill_run(demo: Demo) -> None:
    assert "fault injected: kill-worker" in _executor_logs(demo.out / "spark")
    assert "died" in demo.log and "restarting it" in demo.log
    first_backfill_day = min(r["logical_date"][:10] for r in _runs(demo, NIGHTLY, "backfill"))
    assert _audit_tasks(demo.out / "lakehouse", first_backfill_day)  # that run's inference finished


def test_nothing_the_demo_started_is_still_running(demo: Demo) -> None:
    marker = str(demo.out)
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            leftovers.append(text[:200])
    assert leftovers == []


def _executor_logs(spark_root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in spark_root.glob("worker-*/app-*/*/stderr"))


def _audit_tasks(lakehouse: Path, ds: str) -> list[dict[str, Any]]:
    from pipelines.tables.audit import latest_success, read_audit
    from pipelines.tables.delta_rs import DeltaRsStore

    row = latest_success(read_audit(DeltaRsStore(None, str(lakehouse)), ds), "infer_user_links")
    assert row is not None, ds
    return list(row["metrics"]["tasks"])
