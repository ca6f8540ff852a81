"""The table layer: every read and write of a lakehouse table goes through ``pipelines.tables``.

:func:`open_lakehouse` picks the engine for a lakehouse: ``delta-spark``
(:mod:`pipelines.tables.delta_spark`) when its classes load in the JVM, else the embedded
``delta-rs`` (:mod:`pipelines.tables.delta_rs`).  Both implement
:class:`pipelines.tables.store.TableStore`, the protocol every stage works through.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.delta_spark import DeltaSparkStore
from pipelines.tables.store import ENGINE_ENV, TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the Delta Spark data source classes load in the driver JVM (~0.15 s)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect: no py4j gateway
        return False
    try:
        loader = jvm.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension", False, loader)
        return True
    except Exception:
        return False


def open_lakehouse(spark: SparkSession | None, root: str | os.PathLike[str], engine: str | None = None) -> TableStore:
    """The store for ``root``: delta-spark when its classes are loadable, delta-rs otherwise.

    ``engine`` (or ``$LIME_RANK_TABLE_ENGINE``) forces one: ``auto``, ``delta-rs``, ``delta-spark``.
    """
    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip()
    if choice not in ("auto", "delta-rs", "delta-spark"):
        raise ConfigError(f"table engine must be auto, delta-rs or delta-spark, got {choice!r}")
    if choice == "delta-rs" or spark is None:
        return DeltaRsStore(spark, root)
    available = delta_spark_available(spark)
    if choice == "delta-spark" and not available:
        raise ConfigError("table engine delta-spark was asked for but its classes are not on the classpath")
    if available:
        return DeltaSparkStore(spark, root)
    return DeltaRsStore(spark, root)
