"""Writing Parquet data files for a Delta commit (runs inside Spark tasks and on the driver).

The file writer is deliberately free of Spark: it turns Arrow record batches into
Parquet files under ``<table>/<k=v>/`` and returns one manifest row per file
(path relative to the table root, partition values, size, row count, Delta
statistics).  The driver commits the manifest in one Delta transaction; files of
a failed or abandoned attempt are never referenced and ``vacuum`` removes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import InvalidPartitionValueError, NonFiniteValueError, NullValueError
from pipelines.tables.schemas import TableSpec

# Partition values become folder names and Delta partitionValues: keep them boring.
_SAFE_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
DEFAULT_MAX_BYTES_PER_FILE = 256 * 1024 * 1024

MANIFEST_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("partition_values", pa.string(), nullable=False),  # JSON object
    pa.field("size", pa.int64(), nullable=False),
    pa.field("num_records", pa.int64(), nullable=False),
    pa.field("stats", pa.string(), nullable=False),  # Delta add.stats JSON
])


@dataclass(frozen=True)
class DataFile:
    """One written file, as the driver receives it."""

    path: str  # relative to the table root, '/'-separated
    partition_values: dict[str, str]
    size: int
    num_records: int
    stats: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DataFile:
        """One manifest row (:data:`MANIFEST_SCHEMA`) as Spark or Arrow hands it back, values untyped."""
        return cls(
            path=str(row["path"]),
            partition_values=json.loads(str(row["partition_values"])),
            size=int(row["size"]),
            num_records=int(row["num_records"]),
            stats=str(row["stats"]),
        )


def check_partition_value(table: str, column: str, value: object) -> str:
    """Return ``value`` as a partition string or raise naming table, column and value."""
    if value is None:
        raise InvalidPartitionValueError(f"table {table!r}: partition column {column!r} is null")
    text = str(value)
    if not _SAFE_PARTITION_VALUE.match(text):
        raise InvalidPartitionValueError(
            f"table {table!r}: partition column {column!r} has value {text!r}; "
            "allowed are 1-200 characters of [A-Za-z0-9_.-]"
        )
    return text


def partition_dir(spec: TableSpec, values: Mapping[str, str]) -> str:
    return "/".join(f"{col}={values[col]}" for col in spec.partition_by)


class _FileStats:
    """Delta file statistics accumulated chunk by chunk: numRecords, nullCount, min/max
    of integer and string columns."""

    def __init__(self) -> None:
        self.rows = 0
        self.nulls: dict[str, int] = {}
        # min/max statistics are kept for integer and string columns only
        self.mins: dict[str, int | str] = {}
        self.maxs: dict[str, int | str] = {}

    def add(self, chunk: pa.Table) -> None:
        self.rows += chunk.num_rows
        for name, column in zip(chunk.column_names, chunk.columns, strict=True):
            self.nulls[name] = self.nulls.get(name, 0) + column.null_count
            typ = column.type
            if (pa.types.is_integer(typ) or pa.types.is_string(typ)) and column.null_count < len(column):
                minmax = pc.min_max(column)
                lo: int | str = minmax["min"].as_py()
                hi: int | str = minmax["max"].as_py()
                self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
                self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self) -> str:
        return json.dumps(
            {"numRecords": self.rows, "minValues": self.mins, "maxValues": self.maxs, "nullCount": self.nulls},
            separators=(",", ":"),
        )


def _check_values(spec: TableSpec, table: pa.Table) -> None:
    for field in spec.data_schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            raise NullValueError(
                f"table {spec.name!r}: column {field.name!r} is NOT NULL but {column.null_count} row(s) are null"
            )
        typ = field.type
        if pa.types.is_list(typ):
            flat = pc.list_flatten(column)
            if not typ.value_field.nullable and flat.null_count:
                raise NullValueError(
                    f"table {spec.name!r}: column {field.name!r} holds {flat.null_count} null element(s)"
                )
            values, vtype = flat, typ.value_type
        else:
            values, vtype = column, typ
        if pa.types.is_floating(vtype) and len(values):
            finite = pc.is_finite(values)
            bad = len(values) - values.null_count - pc.sum(finite).as_py()
            if bad:
                raise NonFiniteValueError(
                    f"table {spec.name!r}: column {field.name!r} holds {bad} NaN/infinite value(s)"
                )


class ParquetFileWriter:
    """Picklable: ``writer(batches) -> manifest batches``; one instance per write.

    ``file_prefix`` makes every file name unique per write and task attempt, so that
    concurrent writers and retried attempts never touch each other's files.  A file
    is closed and a new one started after ``max_bytes_per_file`` of Arrow data.
    """

    def __init__(
        self,
        table_uri: str,
        spec: TableSpec,
        file_prefix: str,
        max_bytes_per_file: int = DEFAULT_MAX_BYTES_PER_FILE,
    ) -> None:
        self.table_uri = table_uri
        self.spec = spec
        self.file_prefix = file_prefix
        self.max_bytes_per_file = max_bytes_per_file

    def _split(self, table: pa.Table) -> Iterator[tuple[dict[str, str], pa.Table]]:
        cols = list(self.spec.partition_by)
        if not cols:
            yield {}, table
            return
        for col in cols:
            if table.column(col).null_count:
                check_partition_value(self.spec.name, col, None)
        keys = table.select(cols).group_by(cols).aggregate([])
        for key in keys.to_pylist():
            mask = None
            for col in cols:
                cond = pc.equal(table.column(col), pa.scalar(key[col], table.schema.field(col).type))
                mask = cond if mask is None else pc.and_(mask, cond)
            values = {col: check_partition_value(self.spec.name, col, key[col]) for col in cols}
            yield values, table.filter(mask)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, root = pafs.FileSystem.from_uri(self.table_uri)
        open_files: dict[str, _OpenFile] = {}
        seq = 0
        done: list[dict[str, object]] = []

        def close(key: str) -> None:
            current = open_files.pop(key)
            current.writer.close()
            current.sink.close()
            info = fs.get_file_info(f"{root}/{current.rel}")
            done.append({"path": current.rel, "partition_values": json.dumps(current.values, sort_keys=True),
                         "size": info.size, "num_records": current.stats.rows,
                         "stats": current.stats.to_json()})

        for batch in batches:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch])
            for values, part in self._split(table):
                data = part.select(self.spec.data_schema.names)
                _check_values(self.spec, data)
                data = data.cast(self.spec.data_schema)
                key = json.dumps(values, sort_keys=True)
                if key in open_files and open_files[key].bytes >= self.max_bytes_per_file:
                    close(key)
                if key not in open_files:
                    folder = partition_dir(self.spec, values)
                    rel = f"part-{self.file_prefix}-{seq:04d}.parquet"
                    seq += 1
                    if folder:
                        rel = f"{folder}/{rel}"
                    fs.create_dir(f"{root}/{folder}" if folder else root, recursive=True)
                    sink = fs.open_output_stream(f"{root}/{rel}")
                    writer = pq.ParquetWriter(sink, self.spec.data_schema, compression=self.spec.compression)
                    open_files[key] = _OpenFile(writer, sink, rel, values)
                current = open_files[key]
                current.writer.write_table(data)
                current.stats.add(data)
                current.bytes += data.nbytes
        for key in list(open_files):
            close(key)
        if done:
            yield pa.RecordBatch.from_pylist(done, schema=MANIFEST_SCHEMA)


class _OpenFile:
    def __init__(self, writer: pq.ParquetWriter, sink: pa.NativeFile, rel: str, values: dict[str, str]) -> None:
        self.writer = writer
        self.sink = sink
        self.rel = rel
        self.values = values
        self.stats = _FileStats()
        self.bytes = 0
