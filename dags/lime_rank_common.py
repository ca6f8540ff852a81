"""Declarations shared by the LIME Rank DAGs (a helper module, not a DAG: see ``.airflowignore``).

Everything here is evaluated when a DAG file is parsed, so it reads environment
variables only: no file I/O, no torch or pyspark import, no connection look-up.
The work happens in the jobs (``jobs/<job>.py``) that the tasks spark-submit.

Environment read at parse time (all optional):

=============================== ============================================ ==========================
variable                        meaning                                      default
=============================== ============================================ ==========================
``LIME_RANK_LAKEHOUSE``         default of the ``lakehouse`` Param           ``<repo>/demo/lakehouse``
``LIME_RANK_CHECKPOINT``        default of the ``checkpoint`` Param          ``<repo>/demo/lime-xor.pt``
``LIME_RANK_SPARK_CONN_ID``     Airflow connection giving the Spark master   ``spark_default``
``LIME_RANK_DAG_RETRIES``       retries of every task (0 for local/CI runs)  ``2``
``LIME_RANK_DAG_RETRY_DELAY_S`` seconds between retries                      ``300``
``LIME_RANK_PYTHON``            interpreter of the Spark driver (and of the  this interpreter
                                executors when no archive is given)
``LIME_RANK_ENV_ARCHIVE``       packed executor environment                  none: executors run
                                (``lime-rank pack-env``), path or URI every  ``LIME_RANK_PYTHON``
                                node can read; shipped with ``spark.archives``
``LIME_RANK_INFERENCE_DEVICE``  default of the ``inference_device`` Param    ``auto``
``LIME_RANK_SPARK_CONF``        JSON object of extra ``--conf`` for every job ``{}``
=============================== ============================================ ==========================

With ``LIME_RANK_ENV_ARCHIVE`` set, every job gets ``spark.archives=<archive>#environment``
and ``spark.pyspark.python=./environment/bin/python`` (the executors unpack the archive
in their working directory and run its interpreter) while the driver, which spark-submit
starts on the Airflow worker, keeps ``LIME_RANK_PYTHON``.  Without it the executors are
handed the Airflow host's interpreter path, which exists only where every node shares
that installation (one machine, or an image that is the same everywhere).

When the Spark connection is not defined anywhere (environment, secrets backend,
metadata DB), tasks run on ``local[*]`` and say so in their log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, Param

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS_DIR = os.path.join(REPO_ROOT, "jobs")
DEFAULT_LAKEHOUSE = os.path.join(REPO_ROOT, "demo", "lakehouse")
DEFAULT_CHECKPOINT = os.path.join(REPO_ROOT, "demo", "lime-xor.pt")
DEFAULT_MASTER = "local[*]"
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_S = 300
TAGS = ["lime-rank", "spark"]
# Airflow creates no task instance for a logical date before a task's start_date (the run then
# "succeeds" doing nothing), and data sets such as MovieLens-100K are from the 1990s.  With
# catchup=False an early start_date schedules nothing extra.
START_DATE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# The run date of a task: the logical date's day.  Asset-triggered runs (and API
# triggers without a logical date) have none in Airflow 3, so fall back to run_after.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
RUN_ID = "{{ run_id }}"


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"${name} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"${name} must be an integer >= {minimum}, got {value}")
    return value


def _env_path(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))


LAKEHOUSE = _env_path("LIME_RANK_LAKEHOUSE", DEFAULT_LAKEHOUSE)
CHECKPOINT = _env_path("LIME_RANK_CHECKPOINT", DEFAULT_CHECKPOINT)
SPARK_CONN_ID = os.environ.get("LIME_RANK_SPARK_CONN_ID", "").strip() or "spark_default"
PYTHON = os.environ.get("LIME_RANK_PYTHON", "").strip() or sys.executable
ENV_ARCHIVE = os.environ.get("LIME_RANK_ENV_ARCHIVE", "").strip()
ARCHIVE_PYTHON = "./environment/bin/python"  # where the executors find the unpacked archive's interpreter
INFERENCE_DEVICES = ["auto", "cpu", "cuda"]


def _env_spark_conf() -> dict[str, str]:
    text = os.environ.get("LIME_RANK_SPARK_CONF", "").strip()
    if not text:
        return {}
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"$LIME_RANK_SPARK_CONF must be a JSON object, got {text!r}: {exc}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"$LIME_RANK_SPARK_CONF must be a JSON object, got {text!r}")
    return {str(k): str(v) for k, v in conf.items()}


def _archive_conf() -> dict[str, str]:
    """The spark-submit settings that ship ``$LIME_RANK_ENV_ARCHIVE`` to the executors (none without it)."""
    if not ENV_ARCHIVE:
        return {}
    if not ENV_ARCHIVE.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        raise ValueError(f"$LIME_RANK_ENV_ARCHIVE must be a .tar.gz, .tgz, .tar or .zip archive, got {ENV_ARCHIVE!r}")
    archive = ENV_ARCHIVE if "://" in ENV_ARCHIVE else os.path.abspath(os.path.expanduser(ENV_ARCHIVE))
    return {
        "spark.archives": f"{archive}#environment",
        "spark.pyspark.python": ARCHIVE_PYTHON,
        "spark.pyspark.driver.python": PYTHON,
    }


def _env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise ValueError(f"${name} must be one of {list(choices)}, got {value!r}")
    return value


INFERENCE_DEVICE = _env_choice("LIME_RANK_INFERENCE_DEVICE", "auto", INFERENCE_DEVICES)
# Spark's own INFO lines would drown the job's log in the task log (the jobs log at INFO).
SPARK_CONF = {"spark.log.level": "WARN", **_archive_conf(), **_env_spark_conf()}


def default_args() -> dict[str, Any]:
    """Task defaults of both DAGs: retries (>= 2 unless overridden for local runs), delay, timeout."""
    return {
        "owner": "lime-rank",
        "retries": _env_int("LIME_RANK_DAG_RETRIES", DEFAULT_RETRIES, 0),
        "retry_delay": dt.timedelta(
            seconds=_env_int("LIME_RANK_DAG_RETRY_DELAY_S", DEFAULT_RETRY_DELAY_S, 0)
        ),
        "execution_timeout": dt.timedelta(hours=3),
    }


def spark_env() -> dict[str, str]:
    """Environment of spark-submit: the venv's spark-submit first on PATH, its Python for the driver,
    and for the executors too unless an archive ships theirs (then ``spark.pyspark.python`` says)."""
    bin_dir = os.path.dirname(PYTHON)
    env = {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)]), "PYSPARK_DRIVER_PYTHON": PYTHON}
    if not ENV_ARCHIVE:
        env["PYSPARK_PYTHON"] = PYTHON
    return env


def job_path(job: str) -> str:
    """``<repo>/jobs/<job>.py``: the application spark-submit runs."""
    return os.path.join(JOBS_DIR, f"{job}.py")


# -- Assets -------------------------------------------------------------------------------------
def _table_uri(table: str) -> str:
    return f"{LAKEHOUSE}/{table}" if "://" in LAKEHOUSE else f"file://{LAKEHOUSE}/{table}"


def table_asset(table: str) -> Asset:
    """The Asset of a lakehouse table under the default lakehouse."""
    return Asset(name=f"lime_rank.{table}", uri=_table_uri(table), group="lime_rank")


ITEMS = table_asset("items")  # produced outside these DAGs (catalogue ingestion)
MODEL = Asset(
    name="lime_rank.model",
    uri=CHECKPOINT if "://" in CHECKPOINT else f"file://{CHECKPOINT}",
    group="lime_rank",
)  # produced by model training / promotion
CANDIDATE_LINK_WEIGHTS = table_asset("candidate_link_weights")
RECOMMENDATIONS = table_asset("recommendations")


# -- Params ------------------------------------------------------------------------------------
def lakehouse_param() -> Param:
    return Param(LAKEHOUSE, type="string", minLength=1, title="lakehouse",
                 description="root folder (or URI) of the lakehouse tables")


def inference_device_param() -> Param:
    return Param(INFERENCE_DEVICE, type="string", enum=INFERENCE_DEVICES, title="inference_device",
                 description="auto: the GPU Spark assigned to the task, else CPU; cpu: always CPU (e.g. under "
                             "fake GPU addresses); cuda: fail unless a GPU is there")


def checkpoint_param() -> Param:
    return Param(CHECKPOINT, type="string", minLength=1, title="checkpoint",
                 description="model checkpoint (path or URI) whose model_version scores this run")


# -- the operator ------------------------------------------------------------------------------
class LimeRankSparkSubmitOperator(SparkSubmitOperator):
    """``spark-submit jobs/<job>.py ARGS`` with the product's defaults.

    * ``application`` is ``jobs/<job>.py`` next to the ``dags/`` folder; the app name
      is ``lime-rank-<job>``; the Spark connection is ``$LIME_RANK_SPARK_CONN_ID``.
    * An argument that renders to ``""`` is dropped, so an optional flag can be
      written as ``"{{ '--flag' if params.x else '' }}"``.
    * If the connection is not defined anywhere, the task runs on ``local[*]``
      (the provider would otherwise fall back to YARN).
    * The events of its outlets (emitted when the job succeeded) carry ``ds`` and
      ``lakehouse`` in their extra, so consumers know which partition was published.
    """

    def __init__(self, *, job: str, application_args: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("conn_id", SPARK_CONN_ID)
        kwargs.setdefault("env_vars", spark_env())
        kwargs.setdefault("name", f"lime-rank-{job}")
        kwargs.setdefault("conf", dict(SPARK_CONF))
        super().__init__(application=job_path(job), application_args=list(application_args), **kwargs)
        self.job = job

    def execute(self, context: Any) -> None:
        self.application_args = [str(a) for a in self.application_args or [] if str(a) != ""]
        _default_master_if_undefined(self._conn_id)
        super().execute(context)
        extra = {key: value for key, value in (("ds", self._arg("--ds")), ("lakehouse", self._arg("--lakehouse")))
                 if value is not None}
        for asset in self.outlets:
            context["outlet_events"][asset].extra.update(extra)

    def _arg(self, flag: str) -> str | None:
        args = self.application_args or []
        return str(args[args.index(flag) + 1]) if flag in args[:-1] else None


def _default_master_if_undefined(conn_id: str) -> None:
    """Define ``conn_id`` as ``local[*]`` for this task process when nothing else defines it."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        env = f"AIRFLOW_CONN_{conn_id.upper()}"
        os.environ[env] = json.dumps({"conn_type": "spark", "host": DEFAULT_MASTER})
        log.warning("Spark connection %r is not defined; running on %s (set $%s to change)",
                    conn_id, DEFAULT_MASTER, env)
