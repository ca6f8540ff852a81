"""A Spark standalone cluster on 127.0.0.1: one master and N workers, each worker with one
(fake) GPU address reported by its discovery script.

The pyspark wheel ships ``bin/spark-class`` but not ``sbin/start-master.sh``, so the
daemons are started as ``spark-class org.apache.spark.deploy.master.Master`` /
``...deploy.worker.Worker`` (FINDINGS.md).  Everything binds to 127.0.0.1
(``SPARK_LOCAL_IP`` too: otherwise the JVMs advertise the machine's external address).
The master's web UI JSON (``/json/``) says which workers are alive.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.deploy.processes import Daemon, Daemons, free_port, try_http_json, wait_for

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HOST = "127.0.0.1"
# The demo's applications are short and run on 2 cores: the C1 compiler alone and the serial GC
# cut a small application's JVM CPU time by about 40% (25 -> 15 CPU-s measured on a trivial job);
# a nightly run at scale wants the default (C2) compiler instead.
SHORT_LIVED_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    port: int
    webui_port: int
    work_dir: Path
    gpu_address: str


@dataclass
class StandaloneCluster:
    root: Path  # properties, discovery scripts
    scratch: Path  # worker and driver folders: each application unpacks the environment there
    spark_home: Path
    master_port: int
    master_webui_port: int
    workers: list[WorkerSpec]
    worker_daemons: dict[int, Daemon] = field(default_factory=dict)

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def master_json_url(self) -> str:
        return f"http://{HOST}:{self.master_webui_port}/json/"

    def state(self) -> dict[str, Any]:
        """The master's view (workers, apps) as its web UI reports it."""
        state = try_http_json(self.master_json_url)
        return state if isinstance(state, dict) else {}

    def alive_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def worker_of_port(self, port: int) -> dict[str, Any] | None:
        """The master's newest record of the worker listening on ``port`` (ids change on restart)."""
        matches = [w for w in self.state().get("workers", []) if int(w.get("port", -1)) == port]
        alive = [w for w in matches if w.get("state") == "ALIVE"]
        return (alive or matches or [None])[-1]


def spark_home() -> Path:
    """The pyspark wheel's Spark distribution (its jars and ``bin/spark-class``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_daemon_env(base: Mapping[str, str], spark_root: Path) -> dict[str, str]:
    """Environment of every Spark daemon and spark-submit of the local deployment."""
    return {**base, "SPARK_HOME": str(spark_root), "SPARK_LOCAL_IP": HOST, "SPARK_MASTER_HOST": HOST,
            "SPARK_DAEMON_JAVA_OPTS": SHORT_LIVED_JVM}


def write_gpu_script(path: Path, address: str) -> Path:
    """A discovery script reporting one fake GPU: exercises Spark's scheduling, not a device."""
    path.write_text(f'#!/bin/sh\necho \'{{"name": "gpu", "addresses": ["{address}"]}}\'\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def plan_cluster(root: Path, scratch: Path, n_workers: int = 2) -> StandaloneCluster:
    """Ports and folders of a cluster (nothing started): its files under ``root``, the workers' and
    drivers' folders under ``scratch``."""
    workers = [WorkerSpec(i, free_port(), free_port(), scratch / f"worker-{i}", str(i)) for i in range(n_workers)]
    return StandaloneCluster(root, scratch, spark_home(), free_port(), free_port(), workers)


def start_master(cluster: StandaloneCluster, daemons: Daemons, env: Mapping[str, str]) -> Daemon:
    spark_class = str(cluster.spark_home / "bin" / "spark-class")
    daemon = daemons.start("spark-master", [
        spark_class, MASTER_CLASS, "--host", HOST, "--port", str(cluster.master_port),
        "--webui-port", str(cluster.master_webui_port)], env, cwd=cluster.root)
    wait_for(f"the Spark master at {cluster.master_json_url}", lambda: cluster.state() or None, 120, daemons)
    return daemon


def start_worker(cluster: StandaloneCluster, spec: WorkerSpec, daemons: Daemons, env: Mapping[str, str],
                 memory: str = "1536m") -> Daemon:
    """Start (or restart) worker ``spec`` with 1 core, ``memory`` and its fake GPU."""
    spec.work_dir.mkdir(parents=True, exist_ok=True)
    script = write_gpu_script(cluster.root / f"gpu-discovery-{spec.index}.sh", spec.gpu_address)
    props = cluster.root / f"worker-{spec.index}.properties"
    props.write_text(f"spark.worker.resource.gpu.amount 1\nspark.worker.resource.gpu.discoveryScript {script}\n"
                     # finished applications' folders (each holds an unpacked environment) are removed
                     "spark.worker.cleanup.enabled true\nspark.worker.cleanup.interval 15\n"
                     "spark.worker.cleanup.appDataTtl 30\n")
    local_dirs = spec.work_dir.with_name(f"{spec.work_dir.name}-local")
    local_dirs.mkdir(parents=True, exist_ok=True)
    env = {**env, "SPARK_LOCAL_DIRS": str(local_dirs)}  # executors' fetched files and shuffle, not /tmp
    daemon = daemons.start(f"spark-worker-{spec.index}", [
        str(cluster.spark_home / "bin" / "spark-class"), WORKER_CLASS, cluster.master_url, "--host", HOST,
        "--port", str(spec.port), "--webui-port", str(spec.webui_port), "--cores", "1", "--memory", memory,
        "--work-dir", str(spec.work_dir), "--properties-file", str(props)], env, cwd=cluster.root)
    cluster.worker_daemons[spec.index] = daemon
    return daemon


def start_cluster(cluster: StandaloneCluster, daemons: Daemons, env: Mapping[str, str]) -> None:
    """Master, then every worker; returns when all workers are ALIVE at the master."""
    cluster.root.mkdir(parents=True, exist_ok=True)
    start_master(cluster, daemons, env)
    for spec in cluster.workers:
        start_worker(cluster, spec, daemons, env)
    wait_workers_alive(cluster, daemons)


def wait_workers_alive(cluster: StandaloneCluster, daemons: Daemons, timeout_s: float = 120) -> None:
    ports = {spec.port for spec in cluster.workers}

    def all_alive() -> bool | None:
        alive = {int(w["port"]) for w in cluster.alive_workers()}
        return True if ports <= alive else None

    wait_for(f"{len(ports)} Spark workers ALIVE at {cluster.master_url}", all_alive, timeout_s, daemons)


def executor_conf(cluster: StandaloneCluster, event_log_dir: Path) -> dict[str, str]:
    """spark-submit settings of the jobs on this cluster: one 1-core executor per worker, each
    with its worker's GPU, all executors registered before the first job, event logs kept."""
    os.makedirs(event_log_dir, exist_ok=True)
    n = len(cluster.workers)
    return {
        "spark.cores.max": str(n), "spark.executor.cores": "1", "spark.executor.memory": "1g",
        "spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
        "spark.driver.host": HOST, "spark.driver.bindAddress": HOST,
        # plain JSON lines, one file per application: greppable by whoever reads them after the fact
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": f"file://{event_log_dir}",
        "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false",
        "spark.sql.shuffle.partitions": str(2 * n),
        "spark.driver.extraJavaOptions": SHORT_LIVED_JVM, "spark.executor.extraJavaOptions": SHORT_LIVED_JVM,
        # the driver unpacks spark.archives too (client mode): into the scratch folder, removed at the end
        "spark.local.dir": str(cluster.scratch / "driver-local"),
    }
