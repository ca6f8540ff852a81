"""The run audit: one appended row per job run in the ``run_audit`` table.

Counts of dropped rows, rows written, timings and the table version each job
committed land here, so an on-call engineer can answer "what did last night's run
do?" with one query, and the run report can draw rows and time per stage.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pyarrow as pa

from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import RUN_AUDIT
from pipelines.tables.store import TableStore, WriteRequest, count_text

log = logging.getLogger(__name__)

STATUS_SUCCEEDED = "succeeded"
STATUS_SKIPPED = "skipped"  # this run id had already committed: nothing redone
STATUS_FAILED = "failed"
STATUS_PUBLISHED = "published"


class AuditRow(TypedDict):
    """One ``run_audit`` row as :func:`read_audit` returns it."""

    ds: str
    job: str
    run_id: str
    status: str
    model_version: str | None
    started_at: dt.datetime
    finished_at: dt.datetime
    table_version: int | None
    metrics: dict[str, Any]  # decoded JSON: counts, timings, and lists and objects (e.g. per-task records)


@dataclass
class AuditRecord:
    """Filled in by a job while it runs; appended to ``run_audit`` when it ends."""

    job: str
    ds: str
    run_id: str
    model_version: str | None = None
    status: str = STATUS_SUCCEEDED
    table_version: int | None = None
    metrics: dict[str, object] = field(default_factory=dict)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    _t0: float = field(default_factory=time.perf_counter)

    def count(self, name: str, value: int | None) -> None:
        """Record a count; None (the engine could not know it) is kept as null, read "unknown"."""
        self.metrics[name] = None if value is None else int(value)
        log.info("%s %s: %s = %s", self.job, self.ds, name, count_text(value))

    def timing(self, name: str, seconds: float) -> None:
        self.metrics[f"seconds_{name}"] = round(float(seconds), 3)

    def elapsed(self) -> float:
        """Seconds since this record was opened."""
        return time.perf_counter() - self._t0

    def to_arrow(self) -> pa.Table:
        finished = dt.datetime.now(dt.UTC)
        self.metrics.setdefault("seconds_total", round(self.elapsed(), 3))
        row = {
            "ds": self.ds, "job": self.job, "run_id": self.run_id, "status": self.status,
            "model_version": self.model_version, "started_at": self.started_at, "finished_at": finished,
            "table_version": self.table_version, "metrics": json.dumps(self.metrics, sort_keys=True),
        }
        return pa.Table.from_pylist([row], schema=RUN_AUDIT.schema)


def new_run_id() -> str:
    """A run id for runs started by hand (Airflow passes its own)."""
    return f"manual-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def append_audit(store: TableStore, record: AuditRecord) -> None:
    """Append the record (its own one-row commit, keyed so a retry of the append adds nothing)."""
    app_id = f"audit:{record.job}:{record.ds}:{record.run_id}:{record.status}:{uuid.uuid4().hex[:8]}"
    store.write_arrow(record.to_arrow(), WriteRequest(RUN_AUDIT, "append", app_id))


@contextmanager
def audited(store: TableStore, job: str, ds: str, run_id: str) -> Iterator[AuditRecord]:
    """Run a job body; append its audit row whether it succeeds or fails (then re-raise)."""
    record = AuditRecord(job=job, ds=ds, run_id=run_id)
    try:
        yield record
    except BaseException as exc:
        record.status = STATUS_FAILED
        record.metrics["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            append_audit(store, record)
        except Exception:
            log.exception("could not append the failure audit row for %s %s", job, ds)
        raise
    append_audit(store, record)


def read_audit(store: TableStore, ds: str) -> list[AuditRow]:
    """Audit rows of ``ds``, oldest first, metrics decoded (driver-side, via delta-rs)."""
    reader = store if isinstance(store, DeltaRsStore) else DeltaRsStore(None, store.root)
    if not reader.exists(RUN_AUDIT):
        return []
    table = pa.table(reader.delta_table(RUN_AUDIT).to_pyarrow_table(filters=[("ds", "=", ds)]))
    rows = sorted(table.to_pylist(), key=lambda r: r["finished_at"])
    for row in rows:
        row["metrics"] = json.loads(row["metrics"])
    return rows


def latest_success(rows: Sequence[AuditRow], job: str, run_id: str | None = None) -> AuditRow | None:
    ok = [r for r in rows if r["job"] == job and r["status"] in (STATUS_SUCCEEDED, STATUS_SKIPPED, STATUS_PUBLISHED)
          and (run_id is None or r["run_id"] == run_id)]
    return ok[-1] if ok else None
