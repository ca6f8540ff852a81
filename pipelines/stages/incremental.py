"""Incremental nightly runs: what a stage may take over from the previous day, and which users
it must recompute.

A user's history depends only on their events (and the model's vocabulary and
``--max-history``), their ``L_P`` only on their history and the model, their top-K list only on
``L_P``, their seen items and the candidate table.  So day ``D`` is day ``D-1`` with the rows of
the users whose events changed recomputed, and the rest copied, as long as everything else is
the same as on ``D-1``.  Each stage checks that it is (:class:`RunMode` says why not, and the stage
then runs in full); docs/incremental.md has the rules.

The previous day is always the calendar day before ``ds``: after a gap the stage runs in full.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

from pipelines.stages.context import EXTRACT_HISTORIES, INFER_USER_LINKS
from pipelines.tables.audit import STATUS_SUCCEEDED, read_audit
from pipelines.tables.schemas import EVENTS, USER_HISTORIES, USER_LINKS, TableSpec
from pipelines.tables.store import TableStore, normalised_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MODE_INCREMENTAL = "incremental"
MODE_FULL = "full"
# infer_user_links' audit metric: the user_links files of the users it encoded, when they are the
# users marked extracted_ds = ds (relative paths)
ENCODED_FILES = "encoded_files"


@dataclass(frozen=True)
class RunMode:
    """Whether a stage reuses the previous day's rows (``incremental``), and why (or why not)."""

    incremental: bool
    reason: str
    previous_ds: str
    previous_table_version: int | None = None  # the commit of the previous day's output built on

    @classmethod
    def full(cls, previous_ds: str, reason: str) -> RunMode:
        return cls(False, reason, previous_ds)

    def audit(self) -> dict[str, object]:
        row: dict[str, object] = {"mode": MODE_INCREMENTAL if self.incremental else MODE_FULL,
                                  "mode_reason": self.reason, "previous_ds": self.previous_ds}
        if self.previous_table_version is not None:
            row["previous_table_version"] = self.previous_table_version
        return row


def previous_ds(ds: str) -> str:
    return (dt.date.fromisoformat(ds) - dt.timedelta(days=1)).isoformat()


def previous_run(store: TableStore, job: str, ds: str, *, upstream: Sequence[str] = (),
                 tables: Sequence[str] = ()) -> tuple[Mapping[str, object] | None, str]:
    """(the audit row of the ``job`` run whose output for ``ds`` is still in place, "") or (None,
    why there is none).

    That is the newest ``job`` run that committed (status succeeded: a skipped retry committed
    nothing), provided no ``upstream`` stage committed for ``ds`` after it (its output would no
    longer match its input) and none of ``tables`` was rolled back for ``ds`` after it."""
    rollbacks = {f"rollback:{t}" for t in tables}
    rows = [r for r in read_audit(store, ds)
            if (r["job"] in (job, *upstream) and r["status"] == STATUS_SUCCEEDED) or r["job"] in rollbacks]
    if not any(r["job"] == job for r in rows):
        return None, f"no successful {job} run for the previous day {ds}"
    last = rows[-1]
    if last["job"] != job:
        return None, f"{last['job']} ran for the previous day {ds} after its last {job} run"
    return last, ""


def copies_marked(store: TableStore, ds: str) -> bool:
    """Whether the rows of ``user_histories(ds)`` with ``extracted_ds`` before ``ds`` are rows of
    ``user_histories`` of the day before as its stages read them: the extraction of ``ds`` in
    place was incremental, built on the previous day's extraction that is still in place.  Then
    the other rows are those of the users with new events, and the later stages need not compare
    the two days' histories to find them."""
    now, _ = previous_run(store, EXTRACT_HISTORIES, ds, tables=[USER_HISTORIES.name])
    before, _ = previous_run(store, EXTRACT_HISTORIES, previous_ds(ds), tables=[USER_HISTORIES.name])
    if now is None or before is None or before["table_version"] is None:
        return False
    metrics = metrics_of(now)
    return metrics.get("mode") == MODE_INCREMENTAL and metrics.get("previous_table_version") == before["table_version"]


def copied_users(store: TableStore, ds: str) -> np.ndarray:
    """Sorted ids of the users with a history (``n > 0``) whose ``user_histories(ds)`` row was
    copied from the day before (``extracted_ds`` before ``ds``); read as Arrow on the driver, three
    narrow columns.  Meaningful when :func:`copies_marked`."""
    import pyarrow.compute as pc

    rows = store.read_arrow(USER_HISTORIES, ["user_id", "n", "extracted_ds"], partition={"ds": ds})
    copied = pc.and_(pc.greater(rows.column("n"), 0), pc.not_equal(rows.column("extracted_ds"), ds))
    return np.sort(rows.column("user_id").filter(copied).to_numpy().astype(np.int64))


def encoded_link_files(store: TableStore, ds: str) -> tuple[list[str] | None, str]:
    """(the ``user_links(ds)`` files holding the rows infer_user_links encoded, "") when its run
    still in place encoded exactly the users marked ``extracted_ds = ds``, named its files
    (:data:`ENCODED_FILES`) and every one is in the table's snapshot; else (None, why not)."""
    row, why_not = previous_run(store, INFER_USER_LINKS, ds, upstream=[EXTRACT_HISTORIES], tables=[USER_LINKS.name])
    if row is None:
        return None, why_not
    named = metrics_of(row).get(ENCODED_FILES)
    if not isinstance(named, list):
        return None, (f"the infer_user_links run of {ds} in place names no encoded files "
                      "(it ran in full or compared histories)")
    root = normalised_uri(store.uri(USER_LINKS.name))
    present = {normalised_uri(uri): uri for uri in store.file_uris(USER_LINKS, partition={"ds": ds})}
    uris = [present.get(normalised_uri(f"{root}/{unquote(str(path))}")) for path in named]
    found = [uri for uri in uris if uri is not None]
    if len(found) < len(uris):
        return None, f"{len(uris) - len(found)} file(s) infer_user_links wrote for {ds} are no longer in user_links"
    return found, ""


def unchanged_users(histories: DataFrame, previous: DataFrame, *, compare_seen: bool) -> np.ndarray:
    """Sorted ids of the users with a history (``n > 0``) in ``histories`` whose row equals theirs
    in ``previous`` (:func:`unchanged_histories`, a Spark join of the two days)."""
    from pyspark.sql import functions as F

    same = unchanged_histories(histories.where(F.col("n") > 0), previous, compare_seen=compare_seen)
    return np.sort(same.toArrow().column("user_id").to_numpy().astype(np.int64))


def metrics_of(row: Mapping[str, object]) -> Mapping[str, object]:
    metrics = row["metrics"]
    return metrics if isinstance(metrics, Mapping) else {}


def first_difference(previous: Mapping[str, object], now: Mapping[str, object]) -> str | None:
    """``"<key> was <old>, now <new>"`` for the first key whose value differs, else None."""
    for key, value in now.items():
        if previous.get(key) != value:
            return f"{key} was {previous.get(key)!r} on the previous day, now {value!r}"
    return None


def files_fingerprint(table_uri: str, files: Sequence[str]) -> str:
    """One value for a set of a table's data files (the candidate table's partition, say): equal
    while the partition is not rewritten, also when the lakehouse is moved (paths relative)."""
    root = normalised_uri(table_uri).rstrip("/") + "/"
    text = "\n".join(sorted(normalised_uri(f).removeprefix(root) for f in files))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EventsChange:
    """How ``events`` changed between the version the previous run read and now."""

    version: int  # now
    table_id: str | None
    added_files: tuple[str, ...]
    removed_files: int
    kept_files: tuple[str, ...] = ()  # the files of the previous version still in place


def events_change(store: TableStore, since_version: int, version: int) -> EventsChange:
    """The data files added to and removed from ``events`` between two versions (the log only)."""
    # events belongs to another team: its columns are checked against the input contract when
    # it is read, not against EVENTS' exact types here
    listed = TableSpec(EVENTS.name, pa.schema([]))
    before = {normalised_uri(f): f for f in store.file_uris(listed, version=since_version)}
    now = {normalised_uri(f): f for f in store.file_uris(listed, version=version)}
    return EventsChange(version, store.table_id(EVENTS), tuple(now[k] for k in sorted(set(now) - set(before))),
                        len(set(before) - set(now)), tuple(now[k] for k in sorted(set(now) & set(before))))


def unchanged_histories(current: DataFrame, previous: DataFrame, *, compare_seen: bool) -> DataFrame:
    """(user_id) of the users of ``current`` whose history row equals their row in ``previous``
    (both ``user_histories`` partitions): the same ``item_ids`` and ``ts`` (what ``L_P`` reads)
    and, with ``compare_seen``, the same ``seen_item_ids`` (what the scorer excludes)."""
    from pyspark.sql import functions as F

    columns = ["item_ids", "ts", *(["seen_item_ids"] if compare_seen else [])]
    prev = previous.select("user_id", *[F.col(c).alias(f"prev_{c}") for c in columns])
    joined = current.select("user_id", *columns).join(prev, "user_id", "inner")
    same = F.lit(True)
    for c in columns:
        same = same & (F.col(c) == F.col(f"prev_{c}"))
    return joined.where(same).select("user_id")
