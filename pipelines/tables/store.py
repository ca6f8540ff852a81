"""What both table engines share: the :class:`TableStore` protocol and the types its methods
take and return, the partition argument check, the lakehouse root checks and the schema checks.

The engines (:mod:`pipelines.tables.delta_rs`, :mod:`pipelines.tables.delta_spark`) depend on
this module and never on each other; :func:`pipelines.tables.open_lakehouse` picks one.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload
from urllib.parse import urlsplit

import pyarrow as pa

from pipelines.errors import ConfigError, LakehouseNotFoundError
from pipelines.tables.parquet_files import DataFile, check_partition_value
from pipelines.tables.schemas import TableSpec

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import DataFrame

WriteMode = Literal["append", "overwrite"]
# a mapInArrow function: a task's input batches -> the batches it makes
ArrowTask = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
ENGINE_ENV = "LIME_RANK_TABLE_ENGINE"  # auto | delta-rs | delta-spark
TXN_VERSION = 1  # the app-transaction version every write records with its app id


@dataclass(frozen=True)
class CommitResult:
    """What a write did: the table version it produced (or found), files and rows added.

    ``files`` and ``rows`` are None when the engine cannot know them (delta-spark with
    Delta's history metrics turned off): shown as "unknown", never as a made-up number.
    ``part_files``: the data files each part of :meth:`TableStore.write_mapped_parts` wrote (paths
    relative to the table root), where the engine knows them (delta-rs), else empty.
    """

    table: str
    version: int
    files: int | None
    rows: int | None
    skipped: bool  # True when this app id had already committed: nothing was written
    part_files: tuple[tuple[str, ...], ...] = ()


def count_text(count: int | None) -> str:
    """A count for logs and messages: the number, or "unknown"."""
    return "unknown" if count is None else str(count)


@dataclass(frozen=True)
class WriteRequest:
    """One write to a table, whatever the engine and whatever the rows come as (DataFrame, task
    output, Arrow table, staged files).

    ``mode='overwrite'`` with ``partition`` replaces that one partition (replaceWhere
    semantics); without ``partition`` it replaces the whole table.  ``app_id`` names the
    logical run: if it already committed, nothing is written and the result has
    ``skipped=True``.  ``metadata`` is recorded in the commit, each key as ``lime_rank.<key>``.
    """

    spec: TableSpec
    mode: WriteMode
    app_id: str
    partition: Mapping[str, str] | None = None
    metadata: Mapping[str, object] | None = None

    def with_checked_partition(self) -> WriteRequest:
        """This request with its partition checked and normalised (:func:`check_partition_arg`)."""
        return replace(self, partition=check_partition_arg(self.spec, self.partition))


@dataclass(frozen=True)
class StagedWrite:
    """Rows written but not committed (:meth:`TableStore.stage`): no reader sees them until
    :meth:`TableStore.commit_staged`; :meth:`TableStore.discard_staged` drops them.

    ``request`` is the write they belong to, its partition checked.  ``frame`` reads the staged
    rows (the table's columns), e.g. for a quality gate before the commit.  delta-rs: ``files``
    are the Parquet files written, outside the Delta log, and ``partition_state`` the
    partition's files when staging began (the commit refuses if another writer changed them).
    delta-spark: ``frame`` is the rows persisted on local disk.  ``own_frame``: the rows of the
    staged DataFrame alone, without those of the ``extra`` inputs (None: not kept apart).
    """

    request: WriteRequest
    frame: DataFrame
    files: tuple[DataFile, ...] = ()
    partition_state: frozenset[str] | None = None
    own_frame: DataFrame | None = None


def normalised_uri(uri: str) -> str:
    """One spelling per location: local files as a plain absolute path (no ``file://``), no
    ``.`` segments, doubled or trailing slashes; other schemes keep scheme and host."""
    parts = urlsplit(uri)
    path = posixpath.normpath(parts.path) if parts.path else "/"
    if parts.scheme in ("", "file"):
        return path
    return f"{parts.scheme}://{parts.netloc}{path}"


def resolve_root(root: str | os.PathLike[str]) -> str:
    """Absolute local path (or an URI with a scheme, passed through)."""
    text = os.fspath(root)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def check_lakehouse_root(root: str) -> None:
    """A local lakehouse root must be an existing folder (URIs with a scheme are not checked).

    Jobs that read inputs call this first: writing the audit row of a failed run into a
    mistyped path would otherwise create a new, empty lakehouse there.
    """
    if "://" in root:
        return
    if not Path(root).is_dir():
        raise LakehouseNotFoundError(
            f"lakehouse {root!r} does not exist or is not a folder; check --lakehouse "
            "(only `lime-rank generate`/`load-movielens` create a lakehouse)"
        )


class TableStore(Protocol):
    """What jobs need from the lakehouse, whatever the engine."""

    root: str
    engine: str
    # the rows of a snapshot are exactly its data files' rows (no deletion vector, no column
    # mapping; delta-rs refuses other tables), so tasks may read the files themselves
    file_list_exact: bool

    def uri(self, table: str) -> str: ...

    def exists(self, spec: TableSpec) -> bool: ...

    def version(self, spec: TableSpec) -> int | None: ...

    def committed_version(self, spec: TableSpec, app_id: str) -> int | None: ...

    def table_id(self, spec: TableSpec) -> str | None: ...

    def check_schema(self, spec: TableSpec) -> None:
        """An existing table must have ``spec``'s schema exactly (:class:`SchemaMismatchError` with
        ``spec.outdated_hint``); a missing table passes.  No Spark job."""

    def partition_rows(self, spec: TableSpec, partition: Mapping[str, str] | None = None) -> int: ...

    def column_bounds(
        self, spec: TableSpec, column: str, partition: Mapping[str, str] | None = None
    ) -> tuple[Any, Any] | None: ...

    def count_rows(self, name: str, partition_filters: Sequence[tuple[str, str, str]]) -> int: ...

    def file_uris(
        self, spec: TableSpec, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> list[str]: ...

    def read_table(
        self, name: str, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> DataFrame: ...

    def read_files(self, name: str, files: Sequence[str], *, version: int | None = None) -> DataFrame:
        """The rows of some of the table's data files, as ``file_uris`` named them."""

    def read(
        self,
        spec: TableSpec,
        *,
        version: int | None = None,
        partition: Mapping[str, str] | None = None,
        allow_extra_columns: bool = False,
    ) -> DataFrame: ...

    def read_arrow(
        self, spec: TableSpec, columns: Sequence[str], *, partition: Mapping[str, str] | None = None,
        exclude_users: np.ndarray | None = None,
    ) -> pa.Table: ...

    def write(self, df: DataFrame, request: WriteRequest) -> CommitResult: ...

    def write_mapped(self, df: DataFrame, task: ArrowTask, request: WriteRequest) -> CommitResult: ...

    def write_mapped_parts(self, parts: Sequence[tuple[DataFrame, ArrowTask]], request: WriteRequest,
                           ) -> CommitResult:
        """:meth:`write_mapped` for several inputs, each with its own task, in one commit."""

    def write_arrow(self, data: pa.Table, request: WriteRequest) -> CommitResult: ...

    def stage(self, df: DataFrame, request: WriteRequest, *,
              extra: Sequence[tuple[DataFrame, ArrowTask]] = ()) -> StagedWrite:
        """Write ``df``'s rows, and the rows each ``extra`` input's task makes, without committing."""

    def commit_staged(self, staged: StagedWrite) -> CommitResult: ...

    def discard_staged(self, staged: StagedWrite) -> None: ...


@overload
def check_partition_arg(spec: TableSpec, partition: Mapping[str, str]) -> dict[str, str]: ...


@overload
def check_partition_arg(spec: TableSpec, partition: None) -> None: ...


@overload
def check_partition_arg(spec: TableSpec, partition: Mapping[str, str] | None) -> dict[str, str] | None: ...


def check_partition_arg(spec: TableSpec, partition: Mapping[str, str] | None) -> dict[str, str] | None:
    """``partition`` names exactly the table's partition columns, with valid values (None passes)."""
    if partition is None:
        return None
    if set(partition) != set(spec.partition_by):
        raise ConfigError(
            f"table {spec.name!r} is partitioned by {list(spec.partition_by)}; "
            f"a partition must name exactly those columns, got {sorted(partition)}"
        )
    return {k: check_partition_value(spec.name, k, v) for k, v in partition.items()}
