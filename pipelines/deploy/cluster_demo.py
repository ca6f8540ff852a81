"""``make cluster-demo``: the nightly pipeline deployed as on a real cluster, on this one machine.

1. a synthetic lakehouse whose last day ``D`` is the last day the nightly schedule has
   closed (so the scheduler itself starts the run of ``D`` once the DAG is unpaused), a
   random-weight LIME-XOR checkpoint, and the executors' environment packed
   (``lime-rank pack-env``);
2. a Spark standalone master and two workers on 127.0.0.1, each worker with one fake GPU;
3. Airflow's api-server, scheduler and dag-processor on 127.0.0.1;
4. as a data engineer: create the ``spark_default`` connection to the master, unpause the
   DAGs, wait for the scheduled nightly run of ``D``, emit a catalogue (``lime_rank.items``)
   Asset event and wait for the Asset-triggered ``lime_candidate_refresh`` run, backfill
   ``D-2..D-1`` through the scheduler and wait for it;
5. ``<out>/summary.json`` (master, lakehouse, executors, DAG runs, table versions), and
   every process stopped, also on failure and on Ctrl-C.

With ``kill_worker_in_backfill`` the first backfill run's inference loses a worker (SIGKILL of
its Worker daemon and executor, :mod:`pipelines.faults`); the demo restarts the worker as an
operator would, and the run must still succeed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.deploy import airflow_local as af
from pipelines.deploy.processes import Daemons, signals_raise, wait_for
from pipelines.deploy.spark_standalone import (
    StandaloneCluster,
    executor_conf,
    plan_cluster,
    spark_daemon_env,
    start_cluster,
    start_worker,
    wait_workers_alive,
)
from pipelines.errors import DeploymentError

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
NIGHTLY = "lime_nightly_scoring"
REFRESH = "lime_candidate_refresh"
# Every application unpacks the environment (~1.4 GB) on its driver and each executor; in memory
# (tmpfs) that costs a copy, on disk it costs minutes over a night of runs.  Needs room for about
# three applications at once.
SCRATCH_MIN_FREE_BYTES = 16 << 30


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    users: int = 2000
    items: int = 500
    days: int = 10
    archive: Path | None = None  # a packed environment to reuse; default: pack one into <out>
    kill_worker_in_backfill: bool = False
    backfill_conf: dict[str, Any] = field(default_factory=dict)  # the backfill runs' Params
    run_timeout_s: float = 900


@dataclass
class DemoState:
    cfg: DemoConfig
    ds: dt.date
    lakehouse: Path
    checkpoint: Path
    archive: Path
    worker_ids: dict[int, list[str]] = field(default_factory=dict)  # worker index -> ids, oldest first


def last_closed_ds(now: dt.datetime) -> dt.date:
    """The ``ds`` of the nightly schedule's latest run (02:00 UTC for the day before)."""
    return (now.astimezone(dt.UTC) - dt.timedelta(hours=2)).date() - dt.timedelta(days=1)


def prepare_world(cfg: DemoConfig, ds: dt.date) -> DemoState:
    """Lakehouse with events up to ``ds``, a checkpoint, and the packed environment."""
    import numpy as np
    from deltalake import DeltaTable

    from jobs.cli import main as cli
    from lime_model.synthetic import random_checkpoint

    lakehouse = cfg.out / "lakehouse"
    start = ds - dt.timedelta(days=cfg.days - 1)
    # a child process: its local Spark session ends with it instead of idling beside the cluster
    generate = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "generate", "--lakehouse", str(lakehouse), "--users", str(cfg.users),
         "--items", str(cfg.items), "--days", str(cfg.days), "--start", start.isoformat()],
        cwd=REPO, env={**own_environment(), "SPARK_LOCAL_IP": "127.0.0.1"}, capture_output=True, text=True,
        timeout=900, check=False)
    if generate.returncode != 0:
        raise DeploymentError(f"lime-rank generate failed for {lakehouse}:\n{generate.stderr[-3000:]}")
    items = DeltaTable(str(lakehouse / "items")).to_pyarrow_table().column("item_id").to_numpy()
    checkpoint = cfg.out / "lime-xor.pt"
    random_checkpoint(checkpoint, np.sort(items), d_model=16, n_heads=2, n_links=4, n_layers=1, max_history=50)
    # stored zip: the cheapest for every driver and executor of every application to unpack
    archive = cfg.archive or cfg.out / "lime-rank-env.zip"
    if cfg.archive is None:
        if cli(["pack-env", "--out", str(archive), "--force"]) != 0:
            raise DeploymentError(f"lime-rank pack-env failed for {archive}")
    elif not archive.is_file():
        raise DeploymentError(f"packed environment {archive} does not exist (lime-rank pack-env --out {archive})")
    return DemoState(cfg, ds, lakehouse, checkpoint, archive)


def dag_environment(state: DemoState, cluster: StandaloneCluster) -> dict[str, str]:
    """What the DAGs read at parse time, and spark-submit inherits, in this deployment."""
    conf = executor_conf(cluster, state.cfg.out / "spark-events")
    if state.cfg.kill_worker_in_backfill:
        # disarmed by its marker until the backfill starts (run_backfill removes it)
        conf["spark.executorEnv.LIME_RANK_FAULT"] = (
            f"kill-worker:stage=infer_user_links:partition=0:attempt=0:once={fault_marker(state)}")
        fault_marker(state).touch()
    return {
        "LIME_RANK_LAKEHOUSE": str(state.lakehouse),
        "LIME_RANK_CHECKPOINT": str(state.checkpoint),
        "LIME_RANK_ENV_ARCHIVE": str(state.archive),
        "LIME_RANK_INFERENCE_DEVICE": "cpu",  # the GPU addresses are fake: scheduling is real, CUDA is not
        "LIME_RANK_DAG_RETRIES": "1",
        "LIME_RANK_DAG_RETRY_DELAY_S": "5",
        "LIME_RANK_SPARK_CONF": json.dumps(conf),
    }


OUTPUT_MARKER = ".lime-rank-cluster-demo"


def fresh_output_folder(out: Path) -> None:
    """An empty ``out``: a previous demo's output is removed, anything else is refused (a mistyped
    ``--out`` must not delete someone's files)."""
    if out.exists():
        if not (out / OUTPUT_MARKER).is_file() and any(out.iterdir()):
            raise DeploymentError(f"{out} is not empty and holds no earlier cluster demo ({OUTPUT_MARKER}); "
                                  "give another --out or empty it yourself")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("written by lime-rank cluster-demo; the next run empties this folder\n")


def scratch_folder(out: Path) -> Path:
    """Where workers and drivers unpack the environment: a fresh folder in /dev/shm when it has room,
    else ``<out>/spark-scratch`` (slower: the copies go to disk)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= SCRATCH_MIN_FREE_BYTES:
        return Path(tempfile.mkdtemp(prefix="lime-rank-cluster-", dir=shm))
    log.warning("/dev/shm has less than %d GiB free: the workers unpack the environment on disk under %s",
                SCRATCH_MIN_FREE_BYTES >> 30, out / "spark-scratch")
    (out / "spark-scratch").mkdir()
    return out / "spark-scratch"


def own_environment() -> dict[str, str]:
    """This process's environment less any Airflow, LIME Rank or PySpark setting: the deployment
    defines its own (an inherited ``AIRFLOW_CONN_SPARK_DEFAULT`` would override the connection)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIME_RANK_", "PYSPARK_"))}


def fault_marker(state: DemoState) -> Path:
    return state.cfg.out / "kill-worker.marker"


def run_cluster_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Everything above; returns the summary (also written to ``<out>/summary.json``)."""
    fresh_output_folder(cfg.out)
    daemons = Daemons(cfg.out / "logs")
    scratch: Path | None = None
    with signals_raise():
        try:
            state = prepare_world(cfg, last_closed_ds(dt.datetime.now(dt.UTC)))
            scratch = scratch_folder(cfg.out)
            cluster = plan_cluster(cfg.out / "spark", scratch)
            base = spark_daemon_env(own_environment(), cluster.spark_home)
            start_cluster(cluster, daemons, base)
            state.worker_ids = {spec.index: [worker_id(cluster, spec.port)] for spec in cluster.workers}
            airflow = af.plan_airflow(cfg.out / "airflow", REPO / "dags", dag_environment(state, cluster))
            af.start_airflow(airflow, daemons, base)
            runs = drive_airflow(state, cluster, airflow, daemons, base)
            summary = build_summary(state, cluster, airflow, runs)
            (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            print_summary(summary)
            return summary
        finally:
            daemons.stop_all()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def drive_airflow(state: DemoState, cluster: StandaloneCluster, airflow: af.LocalAirflow, daemons: Daemons,
                  env: Mapping[str, str]) -> dict[str, Any]:
    """The data engineer's part: connection, unpause, nightly, Asset event, backfill."""
    af.wait_dags_parsed(airflow, [NIGHTLY, REFRESH], daemons)
    host, port = cluster.master_url.rsplit(":", 1)
    airflow.api("/api/v2/connections", "POST", {"connection_id": "spark_default", "conn_type": "spark",
                                                "host": host, "port": int(port)})
    for dag_id in (NIGHTLY, REFRESH):
        airflow.api(f"/api/v2/dags/{dag_id}", "PATCH", {"is_paused": False})
    nightly = wait_for(f"the scheduler to start the {NIGHTLY} run of {state.ds}",
                       lambda: _run_of(airflow, NIGHTLY, "scheduled"), 180, daemons, interval_s=2)
    nightly = af.wait_run_finished(airflow, NIGHTLY, nightly["dag_run_id"], daemons, state.cfg.run_timeout_s)
    log.info("nightly run %s: %s", nightly["dag_run_id"], nightly["state"])
    refresh = emit_catalogue_event(state, airflow, daemons)
    backfill = run_backfill(state, cluster, airflow, daemons, env)
    return {"nightly": nightly, "refresh": refresh, "backfill": backfill}


def _run_of(airflow: af.LocalAirflow, dag_id: str, run_type: str) -> dict[str, Any] | None:
    runs = [r for r in airflow.dag_runs(dag_id) if r["run_type"] == run_type]
    return runs[0] if runs else None


def emit_catalogue_event(state: DemoState, airflow: af.LocalAirflow, daemons: Daemons) -> dict[str, Any]:
    """POST an event on ``lime_rank.items`` (what the catalogue ingestion does) and wait for the
    ``lime_candidate_refresh`` run it triggers."""
    assets = airflow.api("/api/v2/assets?name_pattern=lime_rank.items&limit=10")["assets"]
    asset = next((a for a in assets if a["name"] == "lime_rank.items"), None)
    if asset is None:
        raise DeploymentError(f"Airflow knows no asset lime_rank.items (assets: {[a['name'] for a in assets]})")
    airflow.api("/api/v2/assets/events", "POST", {"asset_id": asset["id"], "extra": {"source": "cluster-demo"}})
    run = wait_for(f"an asset_triggered run of {REFRESH}", lambda: _run_of(airflow, REFRESH, "asset_triggered"),
                   180, daemons, interval_s=2)
    return af.wait_run_finished(airflow, REFRESH, run["dag_run_id"], daemons, state.cfg.run_timeout_s)


def run_backfill(state: DemoState, cluster: StandaloneCluster, airflow: af.LocalAirflow, daemons: Daemons,
                 env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Backfill ``D-2..D-1`` (one run at a time) through the scheduler; restart a killed worker."""
    first, last = state.ds - dt.timedelta(days=2), state.ds - dt.timedelta(days=1)
    if state.cfg.kill_worker_in_backfill:
        fault_marker(state).unlink()  # armed: the first inference task of the backfill kills its worker
    with af.sole_writer(airflow, daemons, env):  # no task runs: the nightly and refresh runs have ended
        airflow.api("/api/v2/backfills", "POST", {
            "dag_id": NIGHTLY, "from_date": f"{first}T00:00:00Z", "to_date": f"{last}T23:59:59Z",
            "max_active_runs": 1, "reprocess_behavior": "none", "dag_run_conf": dict(state.cfg.backfill_conf)})
    daemons_but_workers = Daemons(daemons.log_dir, [d for d in daemons.started
                                                    if not d.name.startswith("spark-worker-")])

    def finished() -> list[dict[str, Any]] | None:
        restart_dead_workers(state, cluster, daemons, env)
        runs = [r for r in airflow.dag_runs(NIGHTLY) if r["run_type"] == "backfill"]
        return runs if len(runs) == 2 and all(r["state"] in af.FINISHED for r in runs) else None

    runs = wait_for(f"the backfill of {first}..{last}", finished, 2 * state.cfg.run_timeout_s, daemons_but_workers,
                    interval_s=3)
    for run in runs:
        af.wait_run_finished(airflow, NIGHTLY, run["dag_run_id"], daemons, 10)
    return runs


def restart_dead_workers(state: DemoState, cluster: StandaloneCluster, daemons: Daemons,
                         env: Mapping[str, str]) -> None:
    """A worker daemon that died is started again on its port and folder (a new worker id)."""
    for spec in cluster.workers:
        daemon = cluster.worker_daemons[spec.index]
        if daemon.alive():
            continue
        log.warning("spark worker %d (pid %d) died (exit %s); restarting it", spec.index, daemon.pid,
                    daemon.process.returncode)
        daemons.stop(daemon)  # leftovers of its process group
        start_worker(cluster, spec, daemons, env)
        wait_workers_alive(cluster, daemons)
        state.worker_ids[spec.index].append(worker_id(cluster, spec.port))


def worker_id(cluster: StandaloneCluster, port: int) -> str:
    """The master's id of the worker listening on ``port``."""
    record = cluster.worker_of_port(port)
    if record is None:
        raise DeploymentError(f"the master at {cluster.master_url} knows no worker on port {port}")
    return str(record["id"])


def build_summary(state: DemoState, cluster: StandaloneCluster, airflow: af.LocalAirflow,
                  runs: Mapping[str, Any]) -> dict[str, Any]:
    from deltalake import DeltaTable

    dag_runs = [{"dag_id": dag_id, "run_id": r["dag_run_id"], "run_type": r["run_type"], "state": r["state"],
                 "logical_date": r["logical_date"]} for dag_id in (NIGHTLY, REFRESH) for r in airflow.dag_runs(dag_id)]
    tables = {p.name: DeltaTable(str(p)).version() for p in sorted(state.lakehouse.iterdir())
              if DeltaTable.is_deltatable(str(p))}
    return {"spark_master": cluster.master_url, "lakehouse": str(state.lakehouse),
            "executors": nightly_executors(state, cluster, runs["nightly"]["dag_run_id"]),
            "dag_runs": dag_runs, "tables": tables}


def nightly_executors(state: DemoState, cluster: StandaloneCluster, run_id: str) -> list[dict[str, Any]]:
    """The executors that ran the nightly run's inference tasks, from its audit row: the tasks
    record their working directory (``<worker dir>/<app id>/<executor id>``) and interpreter."""
    from pipelines.tables.audit import latest_success, read_audit
    from pipelines.tables.delta_rs import DeltaRsStore

    row = latest_success(read_audit(DeltaRsStore(None, str(state.lakehouse)), state.ds.isoformat()),
                         "infer_user_links", run_id)
    if row is None:
        raise DeploymentError(f"no succeeded infer_user_links audit row for run {run_id} of {state.ds}")
    executors: dict[str, dict[str, Any]] = {}
    for task in row["metrics"].get("tasks", []):
        workdir = Path(task["workdir"])
        spec = next((s for s in cluster.workers if workdir.is_relative_to(s.work_dir)), None)
        if spec is None:
            raise DeploymentError(f"task ran in {workdir}, under no worker's work dir")
        record = cluster.worker_of_port(spec.port) or {}
        executors.setdefault(str(workdir), {
            "id": workdir.name, "host": record.get("host", "?"), "worker_id": state.worker_ids[spec.index][0],
            "gpu_addresses": list(task["gpus"]), "python": task["python"]})
    return list(executors.values())


def print_summary(summary: Mapping[str, Any]) -> None:
    print(f"spark master: {summary['spark_master']}   lakehouse: {summary['lakehouse']}")
    print("executors of the nightly inference:")
    for e in summary["executors"]:
        print(f"  executor {e['id']} on {e['worker_id']} ({e['host']}), GPU {e['gpu_addresses']}, python {e['python']}")
    print("DAG runs:")
    for r in summary["dag_runs"]:
        print(f"  {r['dag_id']:24} {r['run_type']:16} {r['state']:8} {r['logical_date']}  {r['run_id']}")
    print("tables:", ", ".join(f"{k} v{v}" for k, v in summary["tables"].items()))

