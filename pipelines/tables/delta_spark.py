"""The delta-spark engine: ``format("delta")`` when the Delta Spark classes are on the classpath.

Production clusters ship delta-spark; this machine cannot download its jars (no
Maven Central), so its tests skip with that reason.  Semantics match
:class:`pipelines.tables.delta_rs.DeltaRsStore`: ``replaceWhere`` for one-partition
overwrites, ``txnAppId``/``txnVersion`` so a retried commit of the same run is
a no-op, ``versionAsOf`` for time travel.
"""

from __future__ import annotations

import json
import logging
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.errors import ConfigError, SparkConfigError, TableError, TableNotFoundError
from pipelines.tables.schemas import TableSpec, check_schema
from pipelines.tables.spark_rows import first_row
from pipelines.tables.store import (
    TXN_VERSION,
    ArrowTask,
    CommitResult,
    StagedWrite,
    WriteRequest,
    check_partition_arg,
    count_text,
    resolve_root,
)

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)


# partition filter operators (those delta-rs accepts too) as Column operations
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def _jvm_view(spark: SparkSession) -> Any:
    """The driver JVM as py4j shows it, for the Delta Java API.

    Typed Any: py4j resolves JVM packages, classes and methods by attribute name at run time, so
    nothing reached through it has a Python type.  pyspark types the view as optional (None until a
    SparkContext runs in this process).
    """
    jvm = spark._jvm
    if jvm is None:
        raise SparkConfigError("the delta-spark engine needs a Spark session with a JVM in this process")
    return jvm


def sql_identifier(name: str) -> str:
    """``name`` as a back-quoted Spark SQL identifier (a back-quote inside is doubled)."""
    return "`" + name.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal: Spark's parser takes backslash escapes, so the
    backslash and the quote are escaped; nothing in ``value`` can end the literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_where_sql(partition: Mapping[str, str]) -> str:
    """The ``replaceWhere`` predicate of one partition (Delta takes it only as SQL text)."""
    return " AND ".join(f"{sql_identifier(k)} = {sql_string(v)}" for k, v in sorted(partition.items()))


def partition_condition(filters: Sequence[tuple[str, str, str]]) -> Column:
    """``(column, op, value)`` filters ANDed as one Column expression (values are literals,
    never parsed as SQL)."""
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for column, op, value in filters:
        if op not in _OPERATORS:
            raise ConfigError(f"partition filter operator must be one of {sorted(_OPERATORS)}, got {op!r}")
        condition = condition & _OPERATORS[op](F.col(sql_identifier(column)), F.lit(value))
    return condition


def _equal_to(partition: Mapping[str, str]) -> Column:
    return partition_condition([(k, "=", v) for k, v in sorted(partition.items())])


@dataclass(frozen=True)
class HistoryEntry:
    """One row of a Delta table's history (``DESCRIBE HISTORY``), the columns a commit result needs."""

    version: int
    user_metadata: str | None
    operation_metrics: Mapping[str, str]


def _app_id_of(user_metadata: str | None) -> str | None:
    """The ``lime_rank.app_id`` our writes put in a commit's userMetadata (None: not ours)."""
    if not user_metadata:
        return None
    try:
        meta = json.loads(user_metadata)
    except ValueError:
        return None  # another writer's free-form userMetadata
    app_id = meta.get("lime_rank.app_id") if isinstance(meta, dict) else None
    return app_id if isinstance(app_id, str) else None


def _metric(entry: HistoryEntry, name: str) -> int | None:
    value = entry.operation_metrics.get(name)
    return None if value is None else int(value)


def commit_from_history(table: str, app_id: str, history: Iterable[HistoryEntry]) -> CommitResult:
    """The commit of ``app_id`` among ``history``: its own version (not the table's latest, which
    a concurrent writer may have made) and the files and rows Delta counted for it
    (operationMetrics ``numFiles``, ``numOutputRows`` of a WRITE); None where Delta recorded no
    metrics (``spark.databricks.delta.history.metricsEnabled=false``): unknown, not a number."""
    ours = [e for e in history if _app_id_of(e.user_metadata) == app_id]
    if not ours:
        raise TableError(f"no commit of app id {app_id!r} in the history of table {table!r} after writing it")
    entry = max(ours, key=lambda e: e.version)
    return CommitResult(table, entry.version, _metric(entry, "numFiles"), _metric(entry, "numOutputRows"),
                        skipped=False)


class DeltaSparkStore:
    engine = "delta-spark"
    file_list_exact = False  # its tables may use deletion vectors or column mapping

    def __init__(self, spark: SparkSession, root: str | os.PathLike[str]) -> None:
        self.spark = spark
        self.root = resolve_root(root)

    def uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _jtable(self, spec: TableSpec) -> Any:
        """The table's JVM ``io.delta.tables.DeltaTable`` (a py4j proxy), or None when it is not a Delta table."""
        delta_table = _jvm_view(self.spark).io.delta.tables.DeltaTable
        uri = self.uri(spec.name)
        if not delta_table.isDeltaTable(self.spark._jsparkSession, uri):
            return None
        return delta_table.forPath(self.spark._jsparkSession, uri)

    def exists(self, spec: TableSpec) -> bool:
        return self._jtable(spec) is not None

    def version(self, spec: TableSpec) -> int | None:
        table = self._jtable(spec)
        if table is None:
            return None
        return int(table.history(1).select("version").head().getLong(0))

    def table_id(self, spec: TableSpec) -> str | None:
        if self._jtable(spec) is None:
            return None
        detail = self.spark.sql(f"DESCRIBE DETAIL delta.{sql_identifier(self.uri(spec.name))}")
        return str(first_row(detail.select("id"), f"DESCRIBE DETAIL of table {spec.name!r}")[0])

    def check_schema(self, spec: TableSpec) -> None:
        if self._jtable(spec) is not None:
            schema = self.spark.read.format("delta").load(self.uri(spec.name)).schema
            check_schema(spec.name, schema, spec.spark_schema, allow_extra=False, hint=spec.outdated_hint)

    def _history(self, spec: TableSpec) -> list[HistoryEntry]:
        """The table's commits that carry userMetadata, newest first (empty: no table)."""
        from pyspark.sql import DataFrame as PyDataFrame

        table = self._jtable(spec)
        if table is None:
            return []
        rows = (PyDataFrame(table.history(), self.spark).where("userMetadata IS NOT NULL")
                .select("version", "userMetadata", "operationMetrics").collect())
        return [HistoryEntry(int(r.version), r.userMetadata, dict(r.operationMetrics or {})) for r in rows]

    def committed_version(self, spec: TableSpec, app_id: str) -> int | None:
        if any(_app_id_of(e.user_metadata) == app_id for e in self._history(spec)):
            return TXN_VERSION
        return None

    def partition_rows(self, spec: TableSpec, partition: Mapping[str, str] | None = None) -> int:
        if self._jtable(spec) is None:
            return 0
        return int(self.read(spec, partition=partition, allow_extra_columns=True).count())

    def column_bounds(
        self, spec: TableSpec, column: str, partition: Mapping[str, str] | None = None
    ) -> tuple[Any, Any] | None:
        """Not read from delta-spark's log here (its statistics sit behind JVM internals): None,
        so callers scan."""
        return None

    def count_rows(self, name: str, partition_filters: Sequence[tuple[str, str, str]]) -> int:
        return int(self.read_table(name).where(partition_condition(partition_filters)).count())

    def file_uris(
        self, spec: TableSpec, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> list[str]:
        return list(self.read(spec, version=version, partition=partition, allow_extra_columns=True).inputFiles())

    def read_table(
        self, name: str, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(self.uri(name))
        return df.where(_equal_to(partition)) if partition else df

    def read_files(self, name: str, files: Sequence[str], *, version: int | None = None) -> DataFrame:
        schema = self.read_table(name, version=version).schema
        if not files:
            return self.spark.createDataFrame([], schema)
        return (self.spark.read.schema(schema).option("basePath", self.uri(name)).parquet(*files)
                .select(*schema.names))

    def read(
        self,
        spec: TableSpec,
        *,
        version: int | None = None,
        partition: Mapping[str, str] | None = None,
        allow_extra_columns: bool = False,
    ) -> DataFrame:
        if self._jtable(spec) is None:
            raise TableNotFoundError(spec.name, self.uri(spec.name))
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(self.uri(spec.name))
        check_schema(spec.name, df.schema, spec.spark_schema, allow_extra=allow_extra_columns,
                     hint=spec.outdated_hint)
        return df.where(_equal_to(partition)) if partition else df

    def read_arrow(
        self, spec: TableSpec, columns: Sequence[str], *, partition: Mapping[str, str] | None = None,
        exclude_users: np.ndarray | None = None,
    ) -> pa.Table:
        """``columns`` of the table or one partition on the driver (through Spark here), without
        the rows of the ``exclude_users`` (int64 ids)."""
        from pyspark.sql import functions as F

        wanted = pa.schema([spec.schema.field(c) for c in columns])
        rows = self.read(spec, partition=partition)
        if exclude_users is not None:
            ids = self.spark.createDataFrame(pa.table({"user_id": pa.array(exclude_users, pa.int64())}))
            rows = rows.join(F.broadcast(ids), "user_id", "left_anti")
        return rows.select(*columns).toArrow().cast(wanted)

    def write(self, df: DataFrame, request: WriteRequest) -> CommitResult:
        spec, mode, app_id = request.spec, request.mode, request.app_id
        check_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        target = check_partition_arg(spec, request.partition)
        if self.committed_version(spec, app_id) is not None:
            return CommitResult(spec.name, self.version(spec) or 0, 0, 0, skipped=True)
        # the table's own schema too: Delta's mismatch error would not say what to do about it
        self.check_schema(spec)
        user_meta = {"lime_rank.app_id": app_id,
                     **{f"lime_rank.{k}": v for k, v in (request.metadata or {}).items()}}
        writer = (
            df.select(*spec.column_names).write.format("delta").mode(mode)
            .option("txnAppId", app_id).option("txnVersion", TXN_VERSION)
            .option("userMetadata", json.dumps(user_meta))
        )
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        if mode == "overwrite" and target:
            writer = writer.option("replaceWhere", replace_where_sql(target))
        writer.save(self.uri(spec.name))
        # from the history, by app id: the table's latest version may be a concurrent writer's
        result = commit_from_history(spec.name, app_id, self._history(spec))
        log.info("%s: committed version %d (%s file(s), %s row(s), app id %s)", spec.name, result.version,
                 count_text(result.files), count_text(result.rows), app_id)
        return result

    def stage(self, df: DataFrame, request: WriteRequest, *,
              extra: Sequence[tuple[DataFrame, ArrowTask]] = ()) -> StagedWrite:
        """The rows (``df``'s and those ``extra`` inputs' tasks make) computed once and persisted on
        local disk (memory does not grow with them); :meth:`commit_staged` writes them in one
        Delta commit."""
        from pyspark import StorageLevel
        from pyspark.sql.pandas.types import from_arrow_schema

        spec = request.spec
        check_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        checked = request.with_checked_partition()
        rows = df.select(*spec.column_names)
        for part, task in extra:
            rows = rows.unionByName(part.mapInArrow(task, from_arrow_schema(spec.schema)))
        frame = rows.persist(StorageLevel.DISK_ONLY)
        try:
            frame.count()
        except Exception:
            frame.unpersist()
            raise
        return StagedWrite(checked, frame)

    def commit_staged(self, staged: StagedWrite) -> CommitResult:
        try:
            return self.write(staged.frame, staged.request)
        finally:
            staged.frame.unpersist()

    def discard_staged(self, staged: StagedWrite) -> None:
        staged.frame.unpersist()

    def write_mapped(self, df: DataFrame, task: ArrowTask, request: WriteRequest) -> CommitResult:
        """delta-spark writes rows from the JVM: ``df.mapInArrow(task)`` goes through :meth:`write`."""
        from pyspark.sql.pandas.types import from_arrow_schema

        return self.write(df.mapInArrow(task, from_arrow_schema(request.spec.schema)), request)

    def write_mapped_parts(self, parts: Sequence[tuple[DataFrame, ArrowTask]], request: WriteRequest,
                           ) -> CommitResult:
        from functools import reduce

        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(request.spec.schema)
        frames = [df.mapInArrow(task, schema) for df, task in parts]
        return self.write(reduce(lambda a, b: a.unionByName(b), frames), request)

    def write_arrow(self, data: pa.Table, request: WriteRequest) -> CommitResult:
        spec = request.spec
        return self.write(self.spark.createDataFrame(data.select(spec.column_names).cast(spec.schema)), request)
