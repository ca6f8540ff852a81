"""The delta-rs engine, the embedded default (DESIGN.md §2 "Tables and engines").

Spark tasks write Parquet files (partition columns in ``k=v`` folders, not in the
files), the driver commits them in ONE Delta transaction carrying an app-transaction
id, so a retried commit of the same run is a no-op, and reads use a snapshot's exact
file list.

delta-rs does not check what a careful writer must, so :class:`DeltaRsStore`
does, each with its own error: every added file exists
(:class:`MissingDataFileError`), no added file lies outside the partition being
overwritten (:class:`PartitionOutsideOverwriteError`), and the partition being
overwritten did not change since the writer's snapshot
(:class:`ConcurrentWriteError`).  Schemas are enforced on write and checked on
read (:class:`SchemaMismatchError` names the columns).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import faults
from pipelines.errors import (
    ConcurrentWriteError,
    MissingDataFileError,
    PartitionOutsideOverwriteError,
    SparkConfigError,
    TableError,
    TableNotFoundError,
    UnsupportedTableFeatureError,
    reraise_task_error,
)
from pipelines.tables.parquet_files import MANIFEST_SCHEMA, DataFile, ParquetFileWriter
from pipelines.tables.schemas import TableSpec, check_schema
from pipelines.tables.store import (
    TXN_VERSION,
    ArrowTask,
    CommitResult,
    StagedWrite,
    WriteMode,
    WriteRequest,
    check_partition_arg,
    normalised_uri,
    resolve_root,
)

if TYPE_CHECKING:
    import numpy as np
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, CommitProperties
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

_COMMIT_ATTEMPTS = 5


def _data_file_uri(table_uri: str, log_path: str) -> str:
    """The normalised location of a file the Delta log names by ``log_path``: relative to the
    table and percent-encoded (Delta protocol), or an absolute URI."""
    path = unquote(log_path)
    if "://" in path or path.startswith("/"):
        return normalised_uri(path)
    return normalised_uri(f"{table_uri.rstrip('/')}/{path}")


def _partition_filters(partition: Mapping[str, str] | None) -> list[tuple[str, str, str]] | None:
    if not partition:
        return None
    return [(k, "=", v) for k, v in sorted(partition.items())]


class DeltaRsStore:
    """Delta tables through delta-rs: Spark writes files, the driver commits once."""

    engine = "delta-rs"
    file_list_exact = True  # check_file_list_exact refuses every snapshot where it would not hold

    def __init__(self, spark: SparkSession | None, root: str | os.PathLike[str]) -> None:
        self.spark = spark
        self.root = resolve_root(root)

    # -- locations and snapshots ---------------------------------------------------------
    def uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _load(self, spec: TableSpec, version: int | None = None) -> DeltaTable | None:
        from deltalake import DeltaTable

        uri = self.uri(spec.name)
        if not DeltaTable.is_deltatable(uri):
            return None
        table = DeltaTable(uri)
        if version is not None:
            if version < 0 or version > table.version():
                raise TableError(
                    f"table {spec.name!r} has versions 0..{table.version()}; version {version} does not exist"
                )
            table.load_as_version(version)
        return table

    def exists(self, spec: TableSpec) -> bool:
        return self._load(spec) is not None

    def version(self, spec: TableSpec) -> int | None:
        table = self._load(spec)
        return None if table is None else table.version()

    def committed_version(self, spec: TableSpec, app_id: str) -> int | None:
        """The app-transaction version recorded for ``app_id`` (None: never committed)."""
        table = self._load(spec)
        return None if table is None else table.transaction_version(app_id)

    def table_id(self, spec: TableSpec) -> str | None:
        """The Delta table id (a UUID fixed at creation: a dropped and re-created table gets a new one)."""
        table = self._load(spec)
        return None if table is None else str(table.metadata().id)

    def check_schema(self, spec: TableSpec) -> None:
        table = self._load(spec)
        if table is not None:
            check_schema(spec.name, pa.schema(table.schema().to_arrow()), spec.schema, allow_extra=False,
                         hint=spec.outdated_hint)

    def delta_table(self, spec: TableSpec, version: int | None = None) -> DeltaTable:
        table = self._load(spec, version)
        if table is None:
            raise TableNotFoundError(spec.name, self.uri(spec.name))
        return table

    # -- reads ------------------------------------------------------------------------------
    def arrow_schema(self, spec: TableSpec, version: int | None = None) -> pa.Schema:
        return pa.schema(self.delta_table(spec, version).schema().to_arrow())

    @staticmethod
    def check_file_list_exact(spec: TableSpec, table: DeltaTable) -> None:
        """Refuse a snapshot whose rows are not exactly its data files' rows: deletion vectors
        hide rows of a file, column mapping gives the files' columns physical names.  Reads by
        file list and rollbacks that re-add old files both rely on it."""
        protocol = table.protocol()
        features = set(protocol.reader_features or []) - {"timestampNtz", "vacuumProtocolCheck"}
        if protocol.min_reader_version > 1 and features:
            raise UnsupportedTableFeatureError(
                f"table {spec.name!r} uses reader features {sorted(features)} (e.g. deletion vectors or "
                "column mapping): reading or re-adding its files by file list would be wrong; use the "
                "delta-spark engine"
            )
        # reader version 2 names no features: column mapping shows in the configuration only
        mapping = table.metadata().configuration.get("delta.columnMapping.mode") or "none"
        if mapping != "none":
            raise UnsupportedTableFeatureError(
                f"table {spec.name!r} uses column mapping (mode {mapping!r}): its files name columns by "
                "physical ids, so reading or re-adding them by file list would be wrong; use the delta-spark engine"
            )

    def file_uris(
        self, spec: TableSpec, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> list[str]:
        table = self.delta_table(spec, version)
        self.check_file_list_exact(spec, table)
        return list(table.file_uris(file_pruning_predicate=_partition_filters(partition)))

    def read(
        self,
        spec: TableSpec,
        *,
        version: int | None = None,
        partition: Mapping[str, str] | None = None,
        allow_extra_columns: bool = False,
    ) -> DataFrame:
        """The table (or one partition) at ``version`` (default: latest) as a DataFrame.

        The schema is the table's own; it must contain ``spec``'s columns with the same
        types (extra columns only with ``allow_extra_columns``).
        """
        schema = self.arrow_schema(spec, version)
        check_schema(spec.name, schema, spec.schema, allow_extra=allow_extra_columns, hint=spec.outdated_hint)
        return self.read_table(spec.name, version=version, partition=partition)

    def read_table(
        self, name: str, *, version: int | None = None, partition: Mapping[str, str] | None = None
    ) -> DataFrame:
        """Any table by name, with whatever schema it has (inputs owned by other teams)."""
        spec = TableSpec(name, pa.schema([]))
        table = self.delta_table(spec, version)
        self.check_file_list_exact(spec, table)
        schema = pa.schema(table.schema().to_arrow())
        files = list(table.file_uris(file_pruning_predicate=_partition_filters(partition)))
        return self._read_files(name, schema, files)

    def read_files(self, name: str, files: Sequence[str], *, version: int | None = None) -> DataFrame:
        """The rows of some of table ``name``'s data files (``file_uris`` of ``version``), with the
        table's schema at ``version``."""
        table = self.delta_table(TableSpec(name, pa.schema([])), version)
        self.check_file_list_exact(TableSpec(name, pa.schema([])), table)
        return self._read_files(name, pa.schema(table.schema().to_arrow()), files)

    def _read_files(self, name: str, schema: pa.Schema, files: Sequence[str]) -> DataFrame:
        """The rows of table ``name``'s data ``files`` (partition values from their folders)."""
        from pyspark.sql.pandas.types import from_arrow_schema

        if self.spark is None:
            raise SparkConfigError(f"table {name!r}: reading into Spark needs a session; this store has none")
        spark_schema = from_arrow_schema(schema)
        if not files:
            return self.spark.createDataFrame([], spark_schema)
        return (
            self.spark.read.schema(spark_schema)
            .option("basePath", self.uri(name))
            .parquet(*files)
            .select(*schema.names)  # partition columns back in the table's column order
        )

    def read_arrow(
        self, spec: TableSpec, columns: Sequence[str], *, partition: Mapping[str, str] | None = None,
        exclude_users: np.ndarray | None = None,
    ) -> pa.Table:
        """``columns`` (not partition columns) of the table or one partition as one Arrow table on
        the driver, read from the data files without a Spark job: for inputs the driver needs
        whole anyway (the candidate matrix, the seen lists it broadcasts).  ``exclude_users``:
        int64 ids whose rows (by ``user_id``) are left out while reading."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        wrong = [c for c in columns if c not in spec.data_schema.names]
        if wrong:
            raise ValueError(f"table {spec.name!r}: read_arrow takes data columns of the spec, not {wrong}")
        table = self.delta_table(spec)  # one snapshot for the schema check and the file list
        check_schema(spec.name, pa.schema(table.schema().to_arrow()), spec.schema, allow_extra=True,
                     hint=spec.outdated_hint)
        self.check_file_list_exact(spec, table)
        files = list(table.file_uris(file_pruning_predicate=_partition_filters(partition)))
        wanted = pa.schema([spec.data_schema.field(c) for c in columns])
        if not files:
            return wanted.empty_table()
        fs, _ = pafs.FileSystem.from_uri(files[0])
        paths = [pafs.FileSystem.from_uri(f)[1] for f in files]
        kept = None if exclude_users is None else ~pc.field("user_id").isin(pa.array(exclude_users, pa.int64()))
        dataset = pads.dataset(paths, format="parquet", filesystem=fs)
        return dataset.to_table(columns=list(columns), filter=kept).cast(wanted)

    def partition_rows(self, spec: TableSpec, partition: Mapping[str, str] | None = None) -> int:
        """Rows in the partition (from the log's file statistics; 0 when the table is missing)."""
        table = self._load(spec)
        if table is None:
            return 0
        actions = pa.table(table.get_add_actions(flatten=False))
        if actions.num_rows == 0:
            return 0
        rows = actions.column("num_records").to_pylist()
        if not partition:
            return int(sum(r or 0 for r in rows))
        values = actions.column("partition").to_pylist()
        return int(sum(r or 0 for r, v in zip(rows, values, strict=True)
                       if v is not None and all(v.get(k) == want for k, want in partition.items())))

    def column_bounds(
        self, spec: TableSpec, column: str, partition: Mapping[str, str] | None = None
    ) -> tuple[Any, Any] | None:
        """(min, max) of a non-null integer or string ``column`` over the partition, from the log's
        file statistics (no scan).  None when they cannot say: the partition has no file, or a
        file lacks the statistic or holds nulls in ``column``; the caller then scans."""
        table = self._load(spec)
        if table is None:
            return None
        actions = pa.table(table.get_add_actions(flatten=True))
        names = (f"min.{column}", f"max.{column}", f"null_count.{column}")
        if actions.num_rows == 0 or any(n not in actions.column_names for n in names):
            return None
        lows, highs, nulls = (actions.column(n).to_pylist() for n in names)
        keep = [True] * actions.num_rows
        for key, want in (partition or {}).items():
            if f"partition.{key}" not in actions.column_names:
                return None
            keep = [k and v == want for k, v in zip(keep, actions.column(f"partition.{key}").to_pylist(),
                                                     strict=True)]
        picked = [(lo, hi, nc) for lo, hi, nc, k in zip(lows, highs, nulls, keep, strict=True) if k]
        if not picked or any(lo is None or hi is None or nc != 0 for lo, hi, nc in picked):
            return None
        return min(lo for lo, _, _ in picked), max(hi for _, hi, _ in picked)

    def count_rows(self, name: str, partition_filters: Sequence[tuple[str, str, str]]) -> int:
        """Rows in the files selected by partition filters, from the log's statistics (no scan)."""
        table = self._load(TableSpec(name, pa.schema([])))
        if table is None:
            return 0
        # both sides normalised: the root may be spelled file://, with ./ or a trailing slash,
        # and the log's paths are percent-encoded where file_uris() are not
        selected = {normalised_uri(u) for u in table.file_uris(file_pruning_predicate=list(partition_filters))}
        actions = pa.table(table.get_add_actions(flatten=False))
        total = 0
        for path, rows in zip(actions.column("path").to_pylist(), actions.column("num_records").to_pylist(),
                              strict=True):
            if _data_file_uri(table.table_uri, path) in selected:
                total += int(rows or 0)
        return total

    # -- writes -----------------------------------------------------------------------------
    def write(self, df: DataFrame, request: WriteRequest) -> CommitResult:
        """Write ``df`` in one atomic commit (:class:`WriteRequest` says where and how)."""
        spec = request.spec
        check_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        return self._write([(df.select(*spec.column_names), None)], request)

    def write_mapped(self, df: DataFrame, task: ArrowTask, request: WriteRequest) -> CommitResult:
        """Like :meth:`write` for the rows ``df.mapInArrow(task, spec)`` would give, but each task
        writes the batches its ``task`` makes straight to its files: the rows never pass through
        the JVM (for ``L_P``, hundreds of MB converted twice).  Every batch must have ``spec``'s
        Arrow schema."""
        return self._write([(df, task)], request)

    def write_mapped_parts(self, parts: Sequence[tuple[DataFrame, ArrowTask]], request: WriteRequest,
                           ) -> CommitResult:
        """:meth:`write_mapped` for several inputs, each with its own task: one Spark job per part,
        one commit of all their files."""
        return self._write(list(parts), request)

    def _write(self, parts: Sequence[tuple[DataFrame, ArrowTask | None]], request: WriteRequest) -> CommitResult:
        spec, app_id = request.spec, request.app_id
        check_partition_arg(spec, request.partition)  # a bad partition is an error even for a retried write
        snapshot = self._load(spec)
        if snapshot is not None:
            done = snapshot.transaction_version(app_id)
            if done is not None:
                log.info("%s: app id %s already committed; nothing to do", spec.name, app_id)
                return CommitResult(spec.name, snapshot.version(), 0, 0, skipped=True)
        files: list[DataFile] = []
        part_files: list[tuple[str, ...]] = []
        checked, state = request.with_checked_partition(), None
        for df, task in parts:
            written, checked, state = self._write_files(df, task, request, snapshot=snapshot)
            files += written
            part_files.append(tuple(f.path for f in written))
        result = self.commit(checked, files, expected_partition_state=state)
        return result if result.skipped else dataclasses.replace(result, part_files=tuple(part_files))

    def _write_files(
        self, df: DataFrame, task: ArrowTask | None, request: WriteRequest, *, snapshot: DeltaTable | None,
    ) -> tuple[list[DataFile], WriteRequest, frozenset[str] | None]:
        """Run the Spark job whose tasks write the data files: (files, the request with its partition
        checked, partition state)."""
        from pyspark.sql.pandas.types import from_arrow_schema

        checked = request.with_checked_partition()
        spec = request.spec
        state = self.partition_state(snapshot, checked.partition) if request.mode == "overwrite" else None
        writer = ParquetFileWriter(self.uri(spec.name), spec, self._file_prefix())
        manifest = df.mapInArrow(_manifest_task(writer, task), from_arrow_schema(MANIFEST_SCHEMA))
        try:
            rows = manifest.collect()
        except Exception as exc:
            reraise_task_error(exc)
            raise
        return [DataFile.from_row(row.asDict()) for row in rows], checked, state

    def stage(self, df: DataFrame, request: WriteRequest, *,
              extra: Sequence[tuple[DataFrame, ArrowTask]] = ()) -> StagedWrite:
        """Write ``df``'s rows (and those ``extra`` inputs' tasks make) to data files without
        committing them (one Spark job per input).

        Nothing is visible until :meth:`commit_staged`, which checks the same guards as
        :meth:`write` (including that the partition did not change since this call).
        """
        spec = request.spec
        check_schema(spec.name, df.schema, spec.spark_schema, allow_extra=False)
        snapshot = self._load(spec)
        files, checked, state = self._write_files(df.select(*spec.column_names), None, request, snapshot=snapshot)
        own = list(files)
        try:
            for part, task in extra:
                files += self._write_files(part, task, request, snapshot=snapshot)[0]
        except BaseException:
            self.discard_staged(StagedWrite(checked, df, tuple(files), state))
            raise
        frame, own_frame = (self._read_files(spec.name, spec.schema, [f"{self.uri(spec.name)}/{f.path}" for f in fs])
                            for fs in (files, own))
        return StagedWrite(checked, frame, tuple(files), state, own_frame)

    def commit_staged(self, staged: StagedWrite) -> CommitResult:
        return self.commit(staged.request, staged.files, expected_partition_state=staged.partition_state)

    def discard_staged(self, staged: StagedWrite) -> None:
        """Delete the staged files (never referenced by the log); a file already gone is fine."""
        fs, root = pafs.FileSystem.from_uri(self.uri(staged.request.spec.name))
        for f in staged.files:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(f"{root}/{f.path}")

    def write_arrow(self, data: pa.Table, request: WriteRequest) -> CommitResult:
        """Same contract as :meth:`write` for a small Arrow table built on the driver."""
        spec = request.spec
        check_schema(spec.name, data.schema, spec.schema, allow_extra=False)
        checked = request.with_checked_partition()
        snapshot = self._load(spec)
        if snapshot is not None and snapshot.transaction_version(request.app_id) is not None:
            return CommitResult(spec.name, snapshot.version(), 0, 0, skipped=True)
        seen = self.partition_state(snapshot, checked.partition) if request.mode == "overwrite" else None
        writer = ParquetFileWriter(self.uri(spec.name), spec, self._file_prefix() + "-driver")
        data = data.select(spec.column_names).cast(spec.schema)
        files = [
            DataFile.from_row(row)
            for batch in writer(data.to_batches())
            for row in batch.to_pylist()
        ]
        return self.commit(checked, files, expected_partition_state=seen)

    @staticmethod
    def _file_prefix() -> str:
        # unique per write call; the app id is recorded in the commit, not in file names
        return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def partition_state(table: DeltaTable | None, partition: Mapping[str, str] | None) -> frozenset[str]:
        """Relative paths of the files that make up the partition (or table) right now."""
        if table is None:
            return frozenset()
        actions = pa.table(table.get_add_actions(flatten=False))
        paths = actions.column("path").to_pylist()
        if not partition:
            return frozenset(paths)
        values = actions.column("partition").to_pylist() if actions.num_rows else []
        return frozenset(
            p for p, v in zip(paths, values, strict=True)
            if v is not None and all(v.get(k) == want for k, want in partition.items())
        )

    def commit(self, request: WriteRequest, files: Sequence[DataFile], *,
               expected_partition_state: frozenset[str] | None) -> CommitResult:
        """Check the guards, then commit ``files`` as ONE Delta version (``request.partition`` as given)."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, CommitProperties, Transaction

        spec, mode, app_id, partition = request.spec, request.mode, request.app_id, request.partition
        faults.commit_point(spec.name)  # no-op unless $LIME_RANK_FAULT names this table (tests)
        uri = self.uri(spec.name)
        _check_files_to_commit(spec.name, uri, files, mode, partition)
        now_ms = int(time.time() * 1000)
        adds = [
            AddAction(f.path, f.size, f.partition_values, now_ms, True, f.stats) for f in files
        ]
        rows = sum(f.num_records for f in files)
        custom: dict[str, object] = {"lime_rank.app_id": app_id, "lime_rank.rows": rows}
        custom.update({f"lime_rank.{k}": v for k, v in (request.metadata or {}).items()})
        props = CommitProperties(
            custom_metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in custom.items()},
            app_transactions=[Transaction(app_id, TXN_VERSION)],
            max_commit_retries=0,  # _commit_once relies on it to know the version it wrote
        )
        for attempt in range(_COMMIT_ATTEMPTS):
            table = self._load(spec)
            if table is not None and table.transaction_version(app_id) is not None:
                log.info("%s: app id %s committed meanwhile; nothing to do", spec.name, app_id)
                return CommitResult(spec.name, table.version(), 0, 0, skipped=True)
            self._check_snapshot(spec, table, partition, expected_partition_state,
                                 f"{len(files)} file(s) of app id {app_id}")
            try:
                version = self._commit_once(spec, table, adds, mode=mode, partition=partition, props=props)
            except _CreatedMeanwhile:
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise
                continue  # created meanwhile by another writer: check the guards again
            except CommitFailedError as exc:
                # another writer took the version we meant to write: re-check the guards
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise ConcurrentWriteError(
                        f"table {spec.name!r}: commit lost {_COMMIT_ATTEMPTS} races with other writers"
                    ) from exc
                log.warning("%s: commit raced with another writer (%s); re-checking", spec.name, exc)
                continue
            _check_commit_is_ours(spec.name, uri, version, app_id)
            log.info("%s: committed version %d (%s, %d file(s), %d row(s), app id %s)",
                     spec.name, version, mode, len(files), rows, app_id)
            return CommitResult(spec.name, version, len(files), rows, skipped=False)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_snapshot(self, spec: TableSpec, table: DeltaTable | None, partition: Mapping[str, str] | None,
                        expected_partition_state: frozenset[str] | None, what: str) -> None:
        """The snapshot about to be committed on: the table's schema is ours, and the partition is
        as the writer last saw it (else another run wrote it meanwhile)."""
        if table is not None:
            check_schema(spec.name, pa.schema(table.schema().to_arrow()), spec.schema,
                         allow_extra=False, hint=spec.outdated_hint)
        if expected_partition_state is None:
            return
        if self.partition_state(table, partition) != expected_partition_state:
            where = dict(partition) if partition else "(whole table)"
            raise ConcurrentWriteError(
                f"table {spec.name!r}: partition {where} changed since this writer's snapshot "
                f"(another run wrote it); not committing {what}"
            )

    def _commit_once(self, spec: TableSpec, table: DeltaTable | None, adds: Sequence[AddAction], *, mode: WriteMode,
                     partition: Mapping[str, str] | None, props: CommitProperties) -> int:
        """One commit attempt on snapshot ``table`` (None: create the table); the version it wrote.

        The version comes from the commit itself, never from re-reading the table (another
        writer may have committed since): ``props`` sets ``max_commit_retries=0``, so delta-rs
        writes exactly the snapshot's next version or raises ``CommitFailedError``; creating
        a table writes version 0 or fails because it exists.
        """
        from deltalake.exceptions import DeltaError
        from deltalake.transaction import create_table_with_add_actions

        uri = self.uri(spec.name)
        partition_by = list(spec.partition_by) or None
        if table is None:
            try:
                create_table_with_add_actions(uri, _delta_schema(spec.schema), list(adds), mode="error",
                                              partition_by=partition_by, commit_properties=props)
            except DeltaError as exc:
                if "already exists" in str(exc):
                    raise _CreatedMeanwhile(str(exc)) from exc
                raise
            return 0
        table.create_write_transaction(  # list(): typed there as list[AddAction | RemoveAction]
            list(adds), mode, _delta_schema(spec.schema), partition_by=partition_by,
            partition_filters=_partition_filters(partition) if mode == "overwrite" else None,
            commit_properties=props,
        )
        return table.version() + 1


def _check_files_to_commit(table: str, uri: str, files: Sequence[DataFile], mode: WriteMode,
                           partition: Mapping[str, str] | None) -> None:
    """Every file exists (delta-rs would commit a missing one) and lies in the overwritten partition."""
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info([f"{root}/{f.path}" for f in files])
    missing = [f.path for f, info in zip(files, infos, strict=True) if info.type != pafs.FileType.File]
    if missing:
        raise MissingDataFileError(
            f"table {table!r}: {len(missing)} file(s) to commit do not exist, e.g. {missing[:3]}"
        )
    if mode == "overwrite" and partition is not None:
        outside = [f.path for f in files if f.partition_values != dict(partition)]
        if outside:
            raise PartitionOutsideOverwriteError(
                f"table {table!r}: overwriting partition {dict(partition)} but {len(outside)} file(s) "
                f"belong elsewhere, e.g. {outside[:3]}"
            )


class _CreatedMeanwhile(TableError):
    """Another writer created the table between our snapshot and our create commit."""


def _check_commit_is_ours(table: str, uri: str, version: int, app_id: str) -> None:
    """The commit file of ``version`` names ``app_id`` (one small read of the Delta log).

    Guards the assumption :meth:`DeltaRsStore._commit_once` makes about delta-rs (no
    retries: our commit is the snapshot's next version), so that a change there cannot
    put another writer's version into the CommitResult and the audit.
    """
    fs, root = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(f"{root}/_delta_log/{version:020d}.json") as stream:
        lines = stream.read().decode("utf-8").splitlines()
    infos = [json.loads(line)["commitInfo"] for line in lines if line.startswith('{"commitInfo"')]
    if not infos or infos[0].get("lime_rank.app_id") != app_id:
        raise TableError(f"table {table!r}: version {version} is not the commit of app id {app_id!r}; "
                         "the committed version is unknown (see the table's history)")


def _delta_schema(schema: pa.Schema) -> Schema:
    from deltalake import Schema

    return Schema.from_arrow(schema)


def _checked(spec: TableSpec, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        check_schema(spec.name, batch.schema, spec.schema, allow_extra=False)
        yield batch


def _manifest_task(writer: ParquetFileWriter, task: ArrowTask | None = None) -> ArrowTask:
    """mapInArrow callable: one unique file prefix per task attempt; with ``task``, the
    batches it makes from the input are what gets written."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        suffix = "local" if ctx is None else f"p{ctx.partitionId():05d}-a{ctx.attemptNumber()}-t{ctx.taskAttemptId()}"
        task_writer = ParquetFileWriter(
            writer.table_uri, writer.spec, f"{writer.file_prefix}-{suffix}", writer.max_bytes_per_file
        )
        yield from task_writer(batches if task is None else _checked(writer.spec, task(batches)))

    return run
