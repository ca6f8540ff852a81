"""The delta-spark engine: ``format("delta")`` when the Delta Spark classes are on the classpath.

Production clusters ship delta-spark; this machine cannot download its jars (no
Maven Central), so its tests skip with that reason.  Semantics match
:class:`pipelines.lakehouse.DeltaRsStore`: ``replaceWhere`` for one-partition
overwrites, ``txnAppId``/``txnVersion`` so a retried commit of the same run is
a no-op, ``versionAsOf`` for time travel.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.errors import TableNotFoundError
from pipelines.lakehouse import (
    _TXN_VERSION,
    ArrowTask,
    CommitResult,
    StagedWrite,
    WriteMode,
    _check_partition_arg,
    check_spark_schema,
    resolve_root,
)
from pipelines.schemas import TableSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _where(partition: Mapping[str, str]) -> str:
    return " AND ".join(f"`{k}` = '{v}'" for k, v in sorted(partition.items()))


class DeltaSparkStore:
    engine = "delta-spark"

    def __init__(self, spark: SparkSession, root: str | os.PathLike[str]) -> None:
        self.spark = spark
        self.root = resolve_root(root)

    def uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _jtable(self, spec: TableSpec):
        jvm = self.spark._jvm  # type: ignore[attr-defined]
        uri = self.uri(spec.name)
        if not jvm.io.delta.tables.DeltaTable.isDeltaTable(self.spark._jsparkSession, uri):  # type: ignore[attr-defined]
            return None
        return jvm.io.delta.tables.DeltaTable.forPath(self.spark._jsparkSession, uri)  # type: ignore[attr-defined]

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
        return str(self.spark.sql(f"DESCRIBE DETAIL delta.`{self.uri(spec.name)}`").select("id").head()[0])

    def committed_version(self, spec: TableSpec, app_id: str) -> int | None:
        if self._jtable(spec) is None:
            return None
        rows = (
            self.spark.sql(f"DESCRIBE HISTORY delta.`{self.uri(spec.name)}`")
            .where("userMetadata IS NOT NULL")
            .select("userMetadata")
            .collect()
        )
        for row in rows:
            try:
                if json.loads(row.userMetadata).get("lime_rank.app_id") == app_id:
                    return _TXN_VERSION
            except (ValueError, AttributeError):
                continue
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
        df = self.read_table(name)
        for column, op, value in partition_filters:
            df = df.where(f"`{column}` {op} '{value}'")
        return int(df.count())

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
        return df.where(_where(partition)) if partition else df

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
        check_spark_schema(spec.name, df.schema, spec.spark_schema, allow_extra=allow_extra_columns)
        return df.where(_where(partition)) if partition else df

    def read_arrow(
        self, spec: TableSpec, columns: Sequence[str], *, partition: Mapping[str, str] | None = None
    ) -> pa.Table:
        """``columns`` of the table or one partition on the driver (through Spark here)."""
        wanted = pa.schema([spec.schema.field(c) for c in columns])
        return self.read(spec, partition=partition).select(*columns).toArrow().cast(wanted)

    def write(
        self,
        df: DataFrame,
        spec: TableSpec,
        *,
        mode: WriteMode,
        app_id: str,
        partition: Mapping[str, str] | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> CommitResult:
        check_spark_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        target = _check_partition_arg(spec, partition)
        if self.committed_version(spec, app_id) is not None:
            return CommitResult(spec.name, self.version(spec) or 0, 0, 0, skipped=True)
        user_meta = {"lime_rank.app_id": app_id, **{f"lime_rank.{k}": v for k, v in (metadata or {}).items()}}
        writer = (
            df.select(*spec.column_names).write.format("delta").mode(mode)
            .option("txnAppId", app_id).option("txnVersion", _TXN_VERSION)
            .option("userMetadata", json.dumps(user_meta))
        )
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        if mode == "overwrite" and target:
            writer = writer.option("replaceWhere", _where(target))
        writer.save(self.uri(spec.name))
        version = self.version(spec) or 0
        return CommitResult(spec.name, version, -1, -1, skipped=False)

    def stage(
        self, df: DataFrame, spec: TableSpec, *, mode: WriteMode, app_id: str,
        partition: Mapping[str, str] | None = None,
    ) -> StagedWrite:
        """The rows computed once and persisted on local disk (memory does not grow with them);
        :meth:`commit_staged` writes them in one Delta commit."""
        from pyspark import StorageLevel

        check_spark_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        target = _check_partition_arg(spec, partition)
        frame = df.select(*spec.column_names).persist(StorageLevel.DISK_ONLY)
        try:
            frame.count()
        except Exception:
            frame.unpersist()
            raise
        return StagedWrite(spec, mode, app_id, target, frame)

    def commit_staged(self, staged: StagedWrite, metadata: Mapping[str, object] | None = None) -> CommitResult:
        try:
            return self.write(staged.frame, staged.spec, mode=staged.mode, app_id=staged.app_id,
                              partition=staged.partition, metadata=metadata)
        finally:
            staged.frame.unpersist()

    def discard_staged(self, staged: StagedWrite) -> None:
        staged.frame.unpersist()

    def write_mapped(
        self,
        df: DataFrame,
        task: ArrowTask,
        spec: TableSpec,
        *,
        mode: WriteMode,
        app_id: str,
        partition: Mapping[str, str] | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> CommitResult:
        """delta-spark writes rows from the JVM: ``df.mapInArrow(task)`` goes through :meth:`write`."""
        from pyspark.sql.pandas.types import from_arrow_schema

        return self.write(df.mapInArrow(task, from_arrow_schema(spec.schema)), spec, mode=mode, app_id=app_id,
                          partition=partition, metadata=metadata)

    def write_arrow(
        self,
        data: pa.Table,
        spec: TableSpec,
        *,
        mode: WriteMode,
        app_id: str,
        partition: Mapping[str, str] | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> CommitResult:
        df = self.spark.createDataFrame(data.select(spec.column_names).cast(spec.schema))
        return self.write(df, spec, mode=mode, app_id=app_id, partition=partition, metadata=metadata)
