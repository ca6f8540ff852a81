"""The pieces of the cluster demo that need no cluster: daemons and their process groups, polling,
the deployment's settings, the day the scheduler will run."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.deploy.airflow_local import LocalAirflow, retry_unavailable, sole_writer
from pipelines.deploy.cluster_demo import DemoConfig, DemoState, dag_environment, last_closed_ds, own_environment
from pipelines.deploy.processes import Daemons, _group_alive, free_port, http_json, wait_for
from pipelines.deploy.spark_standalone import SHORT_LIVED_JVM, executor_conf, plan_cluster, write_gpu_script
from pipelines.errors import DeploymentError, HttpStatusError
from tests.deploy.background_demo import BackgroundDemo


@pytest.mark.parametrize(("now", "ds"), [
    ("2026-12-05T03:40:00", "2026-12-04"),  # the run of the 4th started at 02:00 on the 5th
    ("2026-12-05T01:59:00", "2026-12-03"),  # not yet: the latest closed day is the 3rd
    ("2026-12-05T02:00:00", "2026-12-04"),
])
def test_the_demo_day_is_the_one_the_nightly_schedule_has_closed(now: str, ds: str) -> None:
    assert last_closed_ds(dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC)) == dt.date.fromisoformat(ds)


def test_stopping_a_daemon_stops_the_processes_it_started(tmp_path: Path) -> None:
    daemons = Daemons(tmp_path / "logs")
    # a shell that starts a child and waits: the child is in the daemon's process group
    daemon = daemons.start("parent", ["bash", "-c", "sleep 300 & echo child $!; wait"], os.environ)
    child = int(wait_for("the child's pid", lambda: _child_pid(daemon.log_path), 30, interval_s=0.1))
    assert daemon.alive() and _group_alive(daemon.pid)
    daemons.stop_all()
    assert not daemon.alive() and not _group_alive(daemon.pid)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert daemons.started == []


def _child_pid(log: Path) -> int | None:
    text = log.read_text() if log.exists() else ""
    return int(text.split()[1]) if text.startswith("child ") and len(text.split()) > 1 else None


def test_a_daemon_that_exits_is_named_with_the_end_of_its_log(tmp_path: Path) -> None:
    daemons = Daemons(tmp_path / "logs")
    daemons.start("flaky", [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"], os.environ)
    with pytest.raises(DeploymentError, match=r"(?s)flaky \(pid \d+\) exited with 3.*bad config"):
        wait_for("something that never comes", lambda: None, 30, daemons, interval_s=0.1)


def test_the_api_server_is_the_sole_writer_while_a_backfill_is_created(tmp_path: Path) -> None:
    daemons = Daemons(tmp_path / "logs")
    sleeper = ["bash", "-c", 'echo "env ${MARKER:-none} ${AIRFLOW_HOME:-none}"; exec sleep 300']
    api = daemons.start("airflow-api-server", sleeper, os.environ)
    scheduler = daemons.start("airflow-scheduler", sleeper, os.environ)
    processor = daemons.start("airflow-dag-processor", sleeper, os.environ)
    airflow = LocalAirflow(tmp_path / "home", tmp_path / "dags", 8080, {"MARKER": "deployment"})
    try:
        with sole_writer(airflow, daemons, {"PATH": os.environ["PATH"]}):
            assert [d.name for d in daemons.started] == ["airflow-api-server"]
            assert api.alive() and not scheduler.alive() and not processor.alive()
        names = [d.name for d in daemons.started]
        assert names == ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor"]
        restarted = daemons.started[1:]
        assert all(d.alive() and d.argv == sleeper for d in restarted)
        assert {d.pid for d in restarted}.isdisjoint({scheduler.pid, processor.pid})
        # started again with the deployment's environment (each log holds both starts' lines)
        expected = f"env deployment {tmp_path / 'home'}"
        for daemon in restarted:
            wait_for(f"{daemon.name}'s line", lambda d=daemon: expected in d.log_path.read_text() or None, 30,
                     interval_s=0.1)
    finally:
        daemons.stop_all()


def test_a_background_demo_the_session_outlives_is_stopped_with_its_children(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:  # a stand-in for the demo: a shell with a child, in its own group
        process = subprocess.Popen(["bash", "-c", "sleep 300 & echo child $!; wait"], stdout=log,
                                   start_new_session=True)
    demo = BackgroundDemo(tmp_path / "demo", log_path, process, time.monotonic())
    child = int(wait_for("the child's pid", lambda: _child_pid(log_path), 30, interval_s=0.1))
    demo.stop()
    assert process.poll() is not None and not _group_alive(process.pid)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    demo.stop()  # already gone: nothing to do, no error


def test_waiting_times_out_naming_what_it_waited_for() -> None:
    start = time.monotonic()
    with pytest.raises(DeploymentError, match="timed out after 0 s waiting for the master"):
        wait_for("the master", lambda: None, 0.2, interval_s=0.05)
    assert time.monotonic() - start < 5


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = {free_port() for _ in range(5)}
    assert len(ports) == 5 and all(1024 < p < 65536 for p in ports)


def test_the_deployment_ignores_inherited_airflow_and_lime_rank_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", '{"conn_type": "spark", "host": "yarn"}')
    monkeypatch.setenv("LIME_RANK_FAULT", "crash-before-commit:table=user_links")
    monkeypatch.setenv("PYSPARK_PYTHON", "/elsewhere/python")
    env = own_environment()
    assert not [k for k in env if k.startswith(("AIRFLOW", "LIME_RANK_", "PYSPARK_"))]
    assert env["PATH"] == os.environ["PATH"]


def test_the_dags_are_pointed_at_the_archive_the_cluster_and_cpu_inference(tmp_path: Path) -> None:
    cluster = plan_cluster(tmp_path / "spark", tmp_path / "scratch")
    cfg = DemoConfig(out=tmp_path, kill_worker_in_backfill=True)
    state = DemoState(cfg, dt.date(2026, 12, 4), tmp_path / "lakehouse", tmp_path / "m.pt", tmp_path / "env.zip")
    env = dag_environment(state, cluster)
    assert env["LIME_RANK_ENV_ARCHIVE"] == str(tmp_path / "env.zip")
    assert env["LIME_RANK_INFERENCE_DEVICE"] == "cpu"
    conf = json.loads(env["LIME_RANK_SPARK_CONF"])
    assert conf == {**executor_conf(cluster, tmp_path / "spark-events"),
                    "spark.executorEnv.LIME_RANK_FAULT": conf["spark.executorEnv.LIME_RANK_FAULT"]}
    assert conf["spark.executor.resource.gpu.amount"] == conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.extraJavaOptions"] == SHORT_LIVED_JVM
    assert conf["spark.local.dir"].startswith(str(tmp_path / "scratch"))
    # the fault is disarmed (its marker exists) until the backfill starts
    marker = conf["spark.executorEnv.LIME_RANK_FAULT"].split("once=")[1]
    assert Path(marker).exists()
    assert [w.gpu_address for w in cluster.workers] == ["0", "1"]
    assert len({w.port for w in cluster.workers} | {cluster.master_port, cluster.master_webui_port}) == 4


def test_the_gpu_discovery_script_reports_one_address(tmp_path: Path) -> None:
    import subprocess

    script = write_gpu_script(tmp_path / "gpu.sh", "1")
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["1"]}


def test_the_output_folder_is_emptied_only_when_an_earlier_demo_wrote_it(tmp_path: Path) -> None:
    from pipelines.deploy.cluster_demo import fresh_output_folder

    out = tmp_path / "demo"
    fresh_output_folder(out)  # new
    (out / "summary.json").write_text("{}")
    fresh_output_folder(out)  # an earlier demo's: emptied
    assert [p.name for p in out.iterdir()] == [".lime-rank-cluster-demo"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DeploymentError, match="is not empty and holds no earlier cluster demo"):
        fresh_output_folder(precious)
    assert (precious / "notes.txt").read_text() == "keep me"


class _ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers each POST with the next (status, body) of ``script``; counts the requests."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script = script
        self.requests = 0


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: _ScriptedServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.server.script[min(self.server.requests, len(self.server.script) - 1)]
        self.server.requests += 1
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def scripted_server(request: pytest.FixtureRequest) -> Iterator[_ScriptedServer]:
    server = _ScriptedServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


_LOCKED = (503, {"detail": "Database is locked. Backfill creation is not supported on SQLite"})


@pytest.mark.parametrize("scripted_server", [[_LOCKED, _LOCKED, (200, {"id": 7})]], indirect=True)
def test_a_request_the_locked_sqlite_database_refused_is_sent_again(scripted_server: _ScriptedServer) -> None:
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}/api/v2/backfills"
    assert retry_unavailable(lambda: http_json(url, "POST", {"dag_id": "d"}), (0.0, 0.0, 0.0)) == {"id": 7}
    assert scripted_server.requests == 3


@pytest.mark.parametrize("scripted_server", [[_LOCKED]], indirect=True)
def test_a_database_that_stays_locked_fails_with_the_servers_answer(scripted_server: _ScriptedServer) -> None:
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}/api/v2/backfills"
    with pytest.raises(HttpStatusError, match=r"HTTP 503.*Database is locked") as failure:
        retry_unavailable(lambda: http_json(url, "POST", {}), (0.0, 0.0))
    assert failure.value.status == 503 and scripted_server.requests == 3


@pytest.mark.parametrize("scripted_server", [[(409, {"detail": "already running"}), (200, {})]], indirect=True)
def test_other_error_statuses_are_not_retried(scripted_server: _ScriptedServer) -> None:
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}/api/v2/backfills"
    with pytest.raises(HttpStatusError, match=r"HTTP 409.*already running"):
        retry_unavailable(lambda: http_json(url, "POST", {}), (0.0, 0.0))
    assert scripted_server.requests == 1
