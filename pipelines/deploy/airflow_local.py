"""Airflow 3 as a data engineer runs it, on 127.0.0.1: api-server, scheduler, dag-processor.

SQLite metadata DB and LocalExecutor (parallelism 2: this machine has 2 cores); the
api-server serves the REST API and the Execution API the task runners call back; the
simple auth manager with every user an admin (a local demo: no password to hand out),
so a token comes from ``GET /auth/token``.  Everything the demo does to Airflow goes
through the public REST API (``/api/v2``), as a deployment script or an on-call engineer
with ``curl`` would.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pipelines.deploy.processes import Daemons, free_port, http_json, try_http_json, wait_for
from pipelines.errors import DeploymentError, HttpStatusError

HOST = "127.0.0.1"
FINISHED = {"success", "failed"}
UNAVAILABLE_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0)

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class LocalAirflow:
    home: Path
    dags_folder: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The configuration every Airflow process of this deployment shares."""
        bin_dir = str(Path(sys.executable).parent)
        return {
            **base,
            "PATH": f"{bin_dir}:{base.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            # the DAG files do not change while the deployment runs: parse them once, in one process
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **self.extra_env,
        }

    # -- REST ------------------------------------------------------------------------------------
    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """One REST call; an HTTP 503 is retried a few times (see :func:`retry_unavailable`)."""
        if self.token is None:
            self.token = http_json(f"{self.base_url}/auth/token")["access_token"]
        headers = {"Authorization": f"Bearer {self.token}"}
        return retry_unavailable(lambda: http_json(f"{self.base_url}{path}", method, body, headers))

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.api(f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=run_after")[
            "dag_runs"]
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        tis: list[dict[str, Any]] = self.api(
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]
        return tis


def retry_unavailable(call: Callable[[], T], delays_s: Sequence[float] = UNAVAILABLE_RETRY_DELAYS_S) -> T:
    """``call()``, again after each delay while it fails with HTTP 503.

    On SQLite the api-server answers 503 when the scheduler holds the database lock (e.g.
    ``POST /backfills``: "Database is locked"); its transaction was rolled back, so the same
    request can be sent again.  Any other error, or the last 503, propagates.
    """
    for delay in delays_s:
        try:
            return call()
        except HttpStatusError as exc:
            if exc.status != HTTPStatus.SERVICE_UNAVAILABLE:
                raise
            log.warning("%s; retrying in %.0f s", exc, delay)
            time.sleep(delay)
    return call()


@contextmanager
def sole_writer(airflow: LocalAirflow, daemons: Daemons, base_env: Mapping[str, str]) -> Iterator[None]:
    """The scheduler and dag-processor stopped while the block runs, started again after it.

    SQLite takes one writer at a time.  ``POST /backfills`` creates its runs in several steps; when
    the scheduler writes meanwhile the api-server answers 503 ("Backfill creation is not supported
    on SQLite under concurrent access") and removes the runs it made, and a scheduler that had
    already loaded one of them dies (``ObjectDeletedError``).  With the api-server the only writer
    the call cannot race.  Use it only while no task runs: stopping the scheduler ends its
    LocalExecutor's task processes.
    """
    writers = [d for d in daemons.started if d.name in ("airflow-scheduler", "airflow-dag-processor")]
    for daemon in writers:
        daemons.stop(daemon)
    try:
        yield
    finally:
        for daemon in writers:
            daemons.start(daemon.name, daemon.argv, airflow.env(base_env))


def plan_airflow(home: Path, dags_folder: Path, extra_env: Mapping[str, str]) -> LocalAirflow:
    # one secret for every process: the api-server verifies the tokens the scheduler issues to tasks
    secret = {"AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32)}
    return LocalAirflow(home, dags_folder, free_port(), {**secret, **extra_env})


def start_airflow(airflow: LocalAirflow, daemons: Daemons, base_env: Mapping[str, str]) -> None:
    """``db migrate``, then the three services; returns when the API is healthy."""
    airflow.home.mkdir(parents=True, exist_ok=True)
    env = airflow.env(base_env)
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow_bin, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600,
                             check=False)
    if migrate.returncode != 0:
        raise DeploymentError(f"airflow db migrate failed ({migrate.returncode}):\n{migrate.stderr[-3000:]}")
    daemons.start("airflow-api-server", [airflow_bin, "api-server", "-H", HOST, "-p", str(airflow.port)], env)
    daemons.start("airflow-scheduler", [airflow_bin, "scheduler"], env)
    daemons.start("airflow-dag-processor", [airflow_bin, "dag-processor"], env)
    wait_for(f"the Airflow api-server at {airflow.base_url}",
             lambda: try_http_json(f"{airflow.base_url}/api/v2/monitor/health"), 300, daemons, interval_s=2)


def wait_dags_parsed(airflow: LocalAirflow, dag_ids: list[str], daemons: Daemons, timeout_s: float = 300) -> None:
    def parsed() -> bool | None:
        listed = airflow.api("/api/v2/dags?limit=100")["dags"]
        return True if set(dag_ids) <= {d["dag_id"] for d in listed} else None

    wait_for(f"the dag-processor to parse {dag_ids}", parsed, timeout_s, daemons, interval_s=2)
    errors = airflow.api("/api/v2/importErrors")["import_errors"]
    if errors:
        raise DeploymentError(f"DAG import errors: {errors}")


def wait_run_finished(airflow: LocalAirflow, dag_id: str, run_id: str, daemons: Daemons,
                      timeout_s: float) -> dict[str, Any]:
    """Wait for one DAG run to end; a failed run raises with its failed tasks."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = airflow.api(path)
        return run if run["state"] in FINISHED else None

    run = wait_for(f"{dag_id} run {run_id} to finish", finished, timeout_s, daemons, interval_s=3)
    if run["state"] != "success":
        failed = [t["task_id"] for t in airflow.task_instances(dag_id, run_id) if t["state"] != "success"]
        raise DeploymentError(f"{dag_id} run {run_id} ended {run['state']}; tasks not successful: {failed} "
                              f"(task logs under {airflow.home / 'logs'})")
    return run
