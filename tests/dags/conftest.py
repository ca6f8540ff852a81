"""An isolated Airflow for the DAG tests: AIRFLOW_HOME in a temporary folder, SQLite, no examples.

Airflow reads its configuration when first imported, so the environment is set
here, before any test module of this folder imports it.  The DAGs' LIME_RANK_*
settings are removed so that the DAGs are parsed with their built-in defaults.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
BIN = Path(sys.executable).parent
_HOME = Path(tempfile.mkdtemp(prefix="lime-rank-airflow-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # also after --collect-only

AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "2",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
os.environ.update(AIRFLOW_ENV)
DAG_SETTINGS = ("LIME_RANK_LAKEHOUSE", "LIME_RANK_CHECKPOINT", "LIME_RANK_SPARK_CONN_ID", "LIME_RANK_SPARK_CONF",
                "LIME_RANK_DAG_RETRIES", "LIME_RANK_DAG_RETRY_DELAY_S", "LIME_RANK_PYTHON", "LIME_RANK_ENV_ARCHIVE",
                "LIME_RANK_INFERENCE_DEVICE")
for name in DAG_SETTINGS:
    os.environ.pop(name, None)


def load_dagbag(**env: str) -> object:
    """Parse dags/ the way Airflow's CLI does (the folder on sys.path), with ``env`` set meanwhile."""
    from airflow.dag_processing.dagbag import BundleDagBag

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.modules.pop("lime_rank_common", None)  # re-read the environment
    try:
        return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.modules.pop("lime_rank_common", None)


@pytest.fixture(scope="module")
def dagbag() -> object:
    return load_dagbag()


@pytest.fixture
def dagbag_with_env():
    return load_dagbag


@pytest.fixture(scope="session")
def airflow_db() -> dict[str, str]:
    """``airflow db migrate`` once; returns the environment for ``airflow`` subprocesses."""
    env = {**os.environ, **AIRFLOW_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    return env
