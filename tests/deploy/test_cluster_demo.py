"""``lime-rank cluster-demo`` on tiny data: the DAGs under a running Airflow scheduler, the jobs on
a Spark standalone cluster (a master, two workers with one fake GPU each) whose executors run the
packed environment's Python; the backfill runs with ``top_k=3``, and a worker is SIGKILLed during
the first backfill run's inference.

One demo run (a subprocess, as ``make cluster-demo`` runs it) feeds every test of this module; it
starts with the test session and runs beside the other tests (``background_demo.py``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.deploy.background_demo import BACKFILL_TOP_K, BackgroundDemo

pytestmark = [pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
NIGHTLY, REFRESH = "lime_nightly_scoring", "lime_candidate_refresh"


@dataclass(frozen=True)
class Demo:
    out: Path
    summary: dict[str, Any]
    log: str

    @property
    def lakehouse(self) -> Path:
        return self.out / "lakehouse"

    def runs(self, dag_id: str, run_type: str) -> list[dict[str, Any]]:
        return [r for r in self.summary["dag_runs"] if r["dag_id"] == dag_id and r["run_type"] == run_type]

    def day(self, run: dict[str, Any]) -> str:
        return str(run["logical_date"])[:10]


@pytest.fixture(scope="module")
def demo(cluster_demo: BackgroundDemo | None) -> Demo:
    assert cluster_demo is not None  # started by tests/conftest.py whenever a test of this module is selected
    code, log = cluster_demo.wait()
    assert code == 0, log[-6000:]
    return Demo(cluster_demo.out, json.loads((cluster_demo.out / "summary.json").read_text()), log)


def test_summary_has_exactly_the_documented_keys(demo: Demo) -> None:
    assert set(demo.summary) == {"spark_master", "lakehouse", "executors", "dag_runs", "tables"}
    assert demo.summary["spark_master"].startswith("spark://127.0.0.1:")
    assert demo.summary["lakehouse"] == str(demo.lakehouse)
    tables = [p for p in demo.lakehouse.iterdir() if DeltaTable.is_deltatable(str(p))]
    assert demo.summary["tables"] == {p.name: DeltaTable(str(p)).version() for p in tables}


def test_executors_ran_on_both_workers_with_their_gpu_and_the_archive_python(demo: Demo) -> None:
    executors = demo.summary["executors"]
    assert len(executors) == 2
    assert len({e["worker_id"] for e in executors}) == 2
    assert all(e["host"] == "127.0.0.1" for e in executors)
    assert sorted(tuple(e["gpu_addresses"]) for e in executors) == [("0",), ("1",)]
    for e in executors:
        # <worker dir>/<app id>/<executor id>/environment/bin/python: where Spark unpacked spark.archives
        python = Path(e["python"])
        assert python.parts[-3:] == ("environment", "bin", "python"), python
        executor_dir = python.parents[2]
        assert executor_dir.name == e["id"] and executor_dir.parent.name.startswith("app-")
        assert executor_dir.parent.parent.name in ("worker-0", "worker-1")
        assert not python.is_relative_to(REPO) and not python.is_relative_to(Path(sys.prefix))


def test_executors_got_the_submitted_jvm_options_and_the_jobs_own(demo: Demo) -> None:
    launches = [line for log in (demo.out / "logs").glob("spark-worker-*.log")
                for line in log.read_text().splitlines() if "Launch command:" in line]
    assert launches
    assert all("-XX:TieredStopAtLevel=1" in line and "-Duser.timezone=UTC" in line for line in launches)


def test_the_scheduler_ran_the_nightly_run_the_asset_triggered_refresh_and_the_backfill(demo: Demo) -> None:
    [nightly] = demo.runs(NIGHTLY, "scheduled")
    [refresh] = demo.runs(REFRESH, "asset_triggered")
    backfill = demo.runs(NIGHTLY, "backfill")
    assert (nightly["state"], refresh["state"]) == ("success", "success")
    assert [r["state"] for r in backfill] == ["success", "success"]
    assert len({demo.day(r) for r in [nightly, *backfill]}) == 3


def test_each_day_holds_one_complete_partition_with_the_k_of_its_run(demo: Demo) -> None:
    recs = DeltaTable(str(demo.lakehouse / "recommendations")).to_pandas()
    links = DeltaTable(str(demo.lakehouse / "user_links")).to_pandas()
    histories = DeltaTable(str(demo.lakehouse / "user_histories")).to_pandas()
    [nightly] = demo.runs(NIGHTLY, "scheduled")
    expected_k = {demo.day(nightly): 10, **{demo.day(r): BACKFILL_TOP_K for r in demo.runs(NIGHTLY, "backfill")}}
    assert sorted(recs.ds.unique()) == sorted(expected_k)
    for ds, k in expected_k.items():
        day = recs[recs.ds == ds]
        assert not day.duplicated(["user_id", "rank"]).any(), ds
        per_user = day.groupby("user_id")["rank"].agg(["count", "max"])
        assert (per_user["count"] == k).all() and (per_user["max"] == k).all(), ds
        users = histories[histories.ds == ds].user_id
        assert set(day.user_id) == set(users), f"users lost or invented on {ds}"
        day_links = links[links.ds == ds].user_id
        assert not day_links.duplicated().any(), f"duplicate user_links rows on {ds}"
        assert set(day.model_version) == set(links[links.ds == ds].model_version), ds


def test_every_run_published_its_day_with_an_asset_event_and_a_report(demo: Demo) -> None:
    audit = DeltaTable(str(demo.lakehouse / "run_audit")).to_pandas()
    with closing(sqlite3.connect(demo.out / "airflow" / "airflow.db")) as db:
        events = db.execute("SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id").fetchall()
    published = [json.loads(extra) for name, extra in events if name == "lime_rank.recommendations"]
    for run in [*demo.runs(NIGHTLY, "scheduled"), *demo.runs(NIGHTLY, "backfill")]:
        ds, run_id = demo.day(run), run["run_id"]
        jobs = audit[(audit.ds == ds) & (audit.run_id == run_id)].set_index("job")["status"]
        assert set(jobs.index) == {"extract_histories", "precompute_candidates", "infer_user_links", "score_topk",
                                   "validate_publish"}, ds
        assert jobs["validate_publish"] == "published"
        assert {"ds": ds, "lakehouse": str(demo.lakehouse)} in published
        page = (demo.lakehouse / "_reports" / f"ds={ds}" / "run_report.html").read_text()
        assert f'<td id="run_id">{run_id}</td>' in page
    assert any(json.loads(extra).get("source") == "cluster-demo" for name, extra in events if name == "lime_rank.items")


def test_a_worker_killed_during_inference_did_not_fail_the_backfill_run(demo: Demo) -> None:
    assert "died (exit -9); restarting it" in demo.log
    first = min(demo.runs(NIGHTLY, "backfill"), key=lambda r: r["logical_date"])
    audit = DeltaTable(str(demo.lakehouse / "run_audit")).to_pandas()
    infer = audit[(audit.run_id == first["run_id"]) & (audit.job == "infer_user_links")]
    assert list(infer.status) == ["succeeded"]  # Spark re-ran the lost task: no Airflow retry was needed
    lost = [e for e in _events(demo.out / "spark-events") if e.get("Event") == "SparkListenerTaskEnd"
            and e.get("Task End Reason", {}).get("Reason") == "ExecutorLostFailure"]
    assert lost, "no task of the run was lost with its executor"


def test_nothing_the_demo_started_is_still_running(demo: Demo) -> None:
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(demo.out) in text or "lime-rank-cluster-" in text:
            leftovers.append(text[:200])
    assert leftovers == []
    assert not list(Path("/dev/shm").glob("lime-rank-cluster-*"))  # the scratch folder is gone too


def _events(folder: Path) -> list[dict[str, Any]]:
    found = []
    for log in (p for p in folder.rglob("*") if p.is_file()):
        found += [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return found

