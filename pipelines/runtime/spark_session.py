"""The one Spark session factory.

Embedded default: ``local[*]``, UTC, Arrow on, small shuffle partitions.  When a
job is launched by ``spark-submit`` (Airflow's SparkSubmitOperator, a cluster),
the master and resources come from spark-submit and are left alone unless the
job was given ``--master`` explicitly.

GPU scheduling is only configured for cluster masters (``spark://``, ``yarn``,
``k8s://``, ``local-cluster[...]``): under ``local[N]`` Spark either fails to
start or hangs the stage silently with GPU resources set, so asking for them
there is refused with :class:`SparkConfigError`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipelines.errors import SparkConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
_LOCAL_RE = re.compile(r"^local(\[(\*|\d+)(,\d+)?\])?$")
_LOCAL_CLUSTER_RE = re.compile(r"^local-cluster\[\d+,\s*\d+,\s*\d+\]$")


def is_local_master(master: str) -> bool:
    """``local``, ``local[N]``, ``local[*]``, ``local[N,F]``: one JVM, no resource scheduling."""
    return bool(_LOCAL_RE.match(master.strip()))


@dataclass(frozen=True)
class GpuSettings:
    """GPU resource scheduling (cluster masters only).

    ``amount_per_executor`` GPUs per executor, ``amount_per_task`` GPUs per task
    (0.5 lets two tasks share one GPU), ``discovery_script`` the executable that
    prints ``{"name": "gpu", "addresses": [...]}``.  For ``local-cluster`` the
    worker settings are filled in as well (each worker discovers its own GPUs).
    """

    discovery_script: str
    amount_per_executor: int = 1
    amount_per_task: float = 1.0

    def __post_init__(self) -> None:
        if self.amount_per_executor < 1:
            raise SparkConfigError(f"gpu amount_per_executor must be >= 1, got {self.amount_per_executor}")
        if not 0 < self.amount_per_task <= self.amount_per_executor:
            raise SparkConfigError(
                f"gpu amount_per_task must be in (0, {self.amount_per_executor}], got {self.amount_per_task}"
            )
        if not os.access(self.discovery_script, os.X_OK):
            raise SparkConfigError(f"GPU discovery script {self.discovery_script!r} is not an executable file")


@dataclass(frozen=True)
class SparkSettings:
    """How to build the session.  ``master=None`` means: spark-submit's, else ``local[*]``."""

    master: str | None = None
    app_name: str = "lime-rank"
    shuffle_partitions: int | None = None
    driver_memory: str | None = None
    ui: bool = False
    gpu: GpuSettings | None = None
    conf: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gpu is not None and self.master is not None and is_local_master(self.master):
            raise SparkConfigError(
                f"GPU scheduling was asked for under master {self.master!r}: local[N] has no resource "
                "scheduler (Spark fails to start or hangs). Use a cluster master or local-cluster[...]"
            )
        if self.shuffle_partitions is not None and self.shuffle_partitions < 1:
            raise SparkConfigError(f"shuffle_partitions must be >= 1, got {self.shuffle_partitions}")


JAVA_OPTION_KEYS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")


def launched_by_spark_submit() -> bool:
    """True inside a driver started by ``spark-submit`` (the JVM gateway already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _gpu_conf(master: str, gpu: GpuSettings) -> dict[str, str]:
    conf = {
        "spark.executor.resource.gpu.amount": str(gpu.amount_per_executor),
        "spark.executor.resource.gpu.discoveryScript": gpu.discovery_script,
        "spark.task.resource.gpu.amount": str(gpu.amount_per_task),
    }
    if _LOCAL_CLUSTER_RE.match(master):
        conf["spark.worker.resource.gpu.amount"] = str(gpu.amount_per_executor)
        conf["spark.worker.resource.gpu.discoveryScript"] = gpu.discovery_script
    return conf


def build_conf(settings: SparkSettings) -> dict[str, str]:
    """The Spark configuration this product needs, as a plain dict (testable without a JVM)."""
    master = settings.master
    if master is None and not launched_by_spark_submit():
        master = DEFAULT_MASTER
    conf: dict[str, str] = {
        "spark.app.name": settings.app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.ui.enabled": "true" if settings.ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        # Arrow batches into Python tasks: user_links rows are ell*d floats, keep batches small
        "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
    }
    if not launched_by_spark_submit():
        # Python workers must run the driver's interpreter (and see its installed packages);
        # under spark-submit the cluster's own Python settings win.
        conf["spark.pyspark.python"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
        conf["spark.pyspark.driver.python"] = sys.executable
    if master is not None:
        conf["spark.master"] = master
        if is_local_master(master) or _LOCAL_CLUSTER_RE.match(master):
            cores = os.cpu_count() or 2
            conf["spark.sql.shuffle.partitions"] = str(settings.shuffle_partitions or max(4, 2 * cores))
    if settings.shuffle_partitions is not None:
        conf["spark.sql.shuffle.partitions"] = str(settings.shuffle_partitions)
    if settings.driver_memory:
        conf["spark.driver.memory"] = settings.driver_memory
    if settings.gpu is not None:
        if master is None:
            master = "(from spark-submit)"
        elif is_local_master(master):  # pragma: no cover - rejected in SparkSettings
            raise SparkConfigError(f"GPU scheduling under {master!r}")
        conf.update(_gpu_conf(master, settings.gpu))
    conf.update(settings.conf)
    return conf


def build_spark_session(settings: SparkSettings | None = None) -> SparkSession:
    """Create (or join) the session described by ``settings``."""
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    conf = build_conf(settings)
    master = conf.get("spark.master")
    if master is not None and master.startswith("local-cluster"):
        # Executor JVMs of local-cluster need SPARK_HOME to find Spark's jars.
        import pyspark

        os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    if not launched_by_spark_submit():
        # PySpark reads the workers' interpreter from the environment, not from the conf.
        os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if launched_by_spark_submit():
        conf = keep_submitted_java_options(conf)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    effective = session_master(spark)
    single_host = is_local_master(effective) or bool(_LOCAL_CLUSTER_RE.match(effective))
    if "spark.sql.shuffle.partitions" not in conf and single_host:
        # e.g. spark-submit --master local[2]: Spark's 200 shuffle partitions would write ~200 tiny files
        explicit = spark.sparkContext.getConf().get("spark.sql.shuffle.partitions")
        if explicit is None:
            spark.conf.set("spark.sql.shuffle.partitions", str(max(4, 2 * (os.cpu_count() or 2))))
    spark.sparkContext.setLogLevel(os.environ.get("LIME_RANK_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark %s session, master=%s", spark.version, spark.sparkContext.master)
    return spark


def keep_submitted_java_options(conf: dict[str, str]) -> dict[str, str]:
    """Our JVM options after those given to spark-submit, not instead of them: a deployment's
    ``--conf spark.executor.extraJavaOptions=...`` (GC, heap dumps, JIT) must reach the executors."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the gateway spark-submit started: SparkConf() then reads its --conf
    submitted = SparkConf()
    merged = dict(conf)
    for key in JAVA_OPTION_KEYS:
        given = submitted.get(key)
        if given and key in merged and merged[key] not in given:
            merged[key] = f"{given} {merged[key]}"
    return merged


def session_master(spark: SparkSession) -> str:
    """The master URL of the running session (pyspark types it optional; a started context has one)."""
    master = spark.sparkContext.master
    if master is None:
        raise SparkConfigError("the Spark session has no master URL (spark.master is unset)")
    return master
