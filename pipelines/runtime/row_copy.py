"""Copying the unchanged users' rows of a previous day's partition into a new one, inside Spark
tasks that read the Parquet files themselves (incremental runs: :mod:`pipelines.stages.incremental`).

The rows never become Spark rows: each task reads a file with pyarrow, keeps the rows of the
users it is told to keep, sets the new partition value, and hands the batches to the table
writer of the same task (``TableStore.write_mapped_parts``).  Only for engines whose snapshots
are exactly their files' rows (``TableStore.file_list_exact``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.tables.schemas import TableSpec

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.tables.store import ArrowTask


def file_rows(spark: SparkSession, files: Sequence[str]) -> DataFrame:
    """One row (``path``) per partition, one partition per file."""
    rdd = spark.sparkContext.parallelize([(f,) for f in files], max(1, len(files)))
    return spark.createDataFrame(rdd, "path string")


def copy_rows_task(spec: TableSpec, partition: dict[str, str], keep: Broadcast[np.ndarray],
                   batch_rows: int = 16_384) -> ArrowTask:
    """mapInArrow function over :func:`file_rows`: the rows of each file whose ``user_id`` is in
    ``keep`` (sorted int64 ids), with ``partition``'s values, as ``spec``'s batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        wanted = pa.array(keep.value, pa.int64())
        data_columns = [n for n in spec.schema.names if n not in partition]
        for batch in batches:
            for path in batch.column("path").to_pylist():
                fs, where = pafs.FileSystem.from_uri(path)
                with fs.open_input_file(where) as handle:
                    for part in pq.ParquetFile(handle).iter_batches(batch_rows, columns=data_columns):
                        rows = pa.Table.from_batches([part])
                        rows = rows.filter(pc.is_in(rows.column("user_id"), value_set=wanted))
                        if rows.num_rows:
                            yield from _with_partition(rows, spec, partition).to_batches()

    return run


def _with_partition(rows: pa.Table, spec: TableSpec, partition: dict[str, str]) -> pa.Table:
    for name, value in partition.items():
        rows = rows.append_column(name, pa.array([value] * rows.num_rows, pa.string()))
    return rows.select(spec.schema.names).cast(spec.schema)


def pass_through(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task of a part whose rows are already the table's rows."""
    yield from batches


def copy_part(spark: SparkSession, spec: TableSpec, *, file_list_exact: bool, files: Sequence[str],
              previous: DataFrame, partition: dict[str, str], keep: Broadcast[np.ndarray],
              keep_frame: DataFrame) -> tuple[DataFrame, ArrowTask]:
    """The part of a write that copies the ``keep`` users' rows of a previous partition (its data
    ``files``, read as ``previous``) into ``partition``: read by the tasks from the files when the
    engine allows it, else as Spark rows joined with ``keep_frame`` (user_id)."""
    from pyspark.sql import functions as F

    if file_list_exact:
        return file_rows(spark, files), copy_rows_task(spec, partition, keep)
    rows = previous.join(F.broadcast(keep_frame), "user_id", "left_semi")
    for name, value in partition.items():
        rows = rows.withColumn(name, F.lit(value))
    return rows.select(*spec.schema.names), pass_through
