"""Operator tools on the lakehouse (docs/operations.md): orphan files and rolling back a bad run.

* :func:`vacuum_table` lists (by default) or deletes data files that no table version
  references any more and that are older than the retention: files of task attempts
  that died, of a driver killed before its commit, of a writer that lost a race, and
  files removed by versions older than the retention.  Retention shorter than
  :data:`MIN_RETENTION_HOURS` is refused unless asked for explicitly: it can delete
  the files of a writer that is still running (not committed yet) and the files that
  time travel to a recent version needs.
* :func:`rollback_partition` makes one partition (e.g. ``recommendations`` of one
  ``ds``) hold again exactly what it held at an earlier table version, in ONE new
  commit that re-adds that version's data files (no data is rewritten), leaving every
  other partition as it is now.  It goes through the table layer's guards: files that
  were vacuumed meanwhile are :class:`MissingDataFileError`, a concurrent writer of
  the partition :class:`ConcurrentWriteError`.  It refuses (:class:`UnsupportedTableFeatureError`)
  a table with deletion vectors or column mapping, now or at ``to_version``: an old add action
  may carry a deletion vector that a bare re-add would drop (deleted rows come back), and
  column-mapped files are only readable through the table's mapping.  On the delta-spark
  engine it refuses with :class:`UnsupportedOnEngineError` (see :func:`rollback_partition`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from pipelines.errors import ConfigError, PartitionNotFoundError, UnsupportedOnEngineError
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.parquet_files import DataFile
from pipelines.tables.schemas import TableSpec
from pipelines.tables.store import ENGINE_ENV, CommitResult, TableStore, WriteRequest, check_partition_arg

log = logging.getLogger(__name__)

MIN_RETENTION_HOURS = 168  # Delta's default delta.deletedFileRetentionDuration (7 days)


@dataclass(frozen=True)
class VacuumResult:
    table: str
    files: list[str]  # relative to the table root
    deleted: bool


def vacuum_table(store: DeltaRsStore, table: str, *, retention_hours: int = MIN_RETENTION_HOURS,
                 delete: bool = False, allow_short_retention: bool = False) -> VacuumResult:
    """Files of ``table`` that no version references (``full`` vacuum) older than ``retention_hours``.

    Dry run unless ``delete``.  A retention under :data:`MIN_RETENTION_HOURS` needs
    ``allow_short_retention`` (only safe while no job writes to the table).
    """
    if retention_hours < 0:
        raise ConfigError(f"retention_hours must be >= 0, got {retention_hours}")
    if retention_hours < MIN_RETENTION_HOURS and not allow_short_retention:
        raise ConfigError(
            f"retention of {retention_hours} h is shorter than {MIN_RETENTION_HOURS} h: it can delete the files of a "
            "writer that has not committed yet and break time travel to recent versions; pass "
            "--allow-short-retention only when no job is writing to this lakehouse"
        )
    dt = store.delta_table(TableSpec(table, pa.schema([])))
    files = dt.vacuum(retention_hours=retention_hours, dry_run=not delete,
                      enforce_retention_duration=not allow_short_retention, full=True)
    log.info("vacuum %s: %d file(s) %s (retention %d h)", table, len(files),
             "deleted" if delete else "would be deleted", retention_hours)
    return VacuumResult(table, sorted(files), delete)


def _stats(row: Mapping[str, object]) -> str:
    def plain(values: object) -> dict[str, object]:
        if not isinstance(values, dict):
            return {}
        return {k: v for k, v in values.items() if isinstance(v, int | str) and not isinstance(v, bool)}

    return json.dumps({"numRecords": row["num_records"], "minValues": plain(row.get("min")),
                       "maxValues": plain(row.get("max")), "nullCount": plain(row.get("null_count"))},
                      separators=(",", ":"))


def _rollback_unsupported(engine: str) -> UnsupportedOnEngineError:
    return UnsupportedOnEngineError(
        f"rollback of one partition is not available on the {engine} engine: Delta's RESTORE TABLE "
        "restores the whole table (it also undoes every other partition's later commits); rewrite "
        "the partition with Spark instead: read it with versionAsOf and write it back with replaceWhere"
    )


def rollback_store(root: str) -> DeltaRsStore:
    """The store ``lime-rank rollback`` works through (no Spark session): delta-rs, unless
    ``$LIME_RANK_TABLE_ENGINE`` says the lakehouse is delta-spark's (then refused)."""
    engine = (os.environ.get(ENGINE_ENV) or "auto").strip()
    if engine == "delta-spark":
        raise _rollback_unsupported(engine)
    return DeltaRsStore(None, root)


def rollback_partition(store: TableStore, spec: TableSpec, partition: Mapping[str, str], to_version: int,
                       ) -> CommitResult:
    """Make ``partition`` of ``spec`` hold what it held at ``to_version``, in one new commit.

    delta-rs only.  On delta-spark this is refused rather than done with Delta's ``RESTORE``:
    RESTORE rolls back the whole table, i.e. every other partition's later commits too (other
    days' recommendations), which is not what this operation promises; and re-adding files
    through delta-rs would bypass the features delta-spark tables may use.
    """
    if not isinstance(store, DeltaRsStore):
        raise _rollback_unsupported(store.engine)
    target = check_partition_arg(spec, partition)
    current = store.delta_table(spec)
    old = store.delta_table(spec, to_version)  # TableError naming the versions when it does not exist
    for snapshot in (current, old):
        store.check_file_list_exact(spec, snapshot)
    actions = pa.table(old.get_add_actions(flatten=False)).to_pylist()
    files = [
        DataFile(path=a["path"], partition_values=dict(a["partition"]), size=int(a["size_bytes"]),
                 num_records=int(a["num_records"] or 0), stats=_stats(a))
        for a in actions if a.get("partition") and all(a["partition"].get(k) == v for k, v in target.items())
    ]
    if not files:
        raise PartitionNotFoundError(spec.name, target, hint=f" at version {to_version}: nothing to roll back to")
    app_id = (f"rollback:{spec.name}:{','.join(f'{k}={v}' for k, v in sorted(target.items()))}"
              f":to=v{to_version}:from=v{current.version()}")
    request = WriteRequest(spec, "overwrite", app_id, partition=target, metadata={"rollback_to_version": to_version})
    result = store.commit(request, files, expected_partition_state=store.partition_state(current, target))
    log.info("rolled %s %s back to version %d as version %d (%d file(s), %d row(s))", spec.name, target,
             to_version, result.version, result.files, result.rows)
    return result
