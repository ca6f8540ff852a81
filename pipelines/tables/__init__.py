"""The table layer: every read and write of a lakehouse table goes through ``pipelines.tables``.

:func:`open_lakehouse` picks the engine for a lakehouse: ``delta-spark``
(:mod:`pipelines.tables.delta_spark`) when its classes load in the JVM, else the embedded
``delta-rs`` (:mod:`pipelines.tables.delta_rs`).  Both implement
:class:`pipelines.tables.store.TableStore`, the protocol every stage works through.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.delta_spark import DeltaSparkStore
from pipelines.tables.store import ENGINE_ENV, TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# set by spark-submit for the Python driver it starts: the JVM is already running
GATEWAY_PORT_ENV = "PYSPARK_GATEWAY_PORT"


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the Delta Spark data source classes load in the driver JVM (~0.15 s)."""
    jvm = getattr(spark, "_jvm", None)
    return jvm is not None and _delta_spark_loadable(jvm)  # no _jvm: Spark Connect, no py4j gateway


def _delta_spark_loadable(jvm: Any) -> bool:
    try:
        loader = jvm.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension", False, loader)
        return True
    except Exception:
        return False


def _engine_choice(engine: str | None) -> str:
    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip()
    if choice not in ("auto", "delta-rs", "delta-spark"):
        raise ConfigError(f"table engine must be auto, delta-rs or delta-spark, got {choice!r}")
    return choice


def engine_without_session() -> str | None:
    """The engine :func:`open_lakehouse` will pick, where that is known before a Spark session
    starts: forced by ``$LIME_RANK_TABLE_ENGINE``, or asked of the JVM that ``spark-submit``
    started for this job (through its py4j gateway, which the session reuses later).  None when
    only a new JVM could tell (``auto`` in a plain ``python`` process)."""
    choice = _engine_choice(None)
    if choice != "auto":
        return choice
    if GATEWAY_PORT_ENV not in os.environ:
        return None
    from pyspark import SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's gateway; starts no SparkContext
    return "delta-spark" if _delta_spark_loadable(SparkContext._jvm) else "delta-rs"


def open_lakehouse(spark: SparkSession | None, root: str | os.PathLike[str], engine: str | None = None) -> TableStore:
    """The store for ``root``: delta-spark when its classes are loadable, delta-rs otherwise.

    ``engine`` (or ``$LIME_RANK_TABLE_ENGINE``) forces one: ``auto``, ``delta-rs``, ``delta-spark``.
    """
    choice = _engine_choice(engine)
    if choice == "delta-rs" or spark is None:
        return DeltaRsStore(spark, root)
    available = delta_spark_available(spark)
    if choice == "delta-spark" and not available:
        raise ConfigError("table engine delta-spark was asked for but its classes are not on the classpath")
    if available:
        return DeltaSparkStore(spark, root)
    return DeltaRsStore(spark, root)
