"""Errors raised by the Spark-side library and the jobs.

One class per failure, each naming the table, column and value involved, so
that an on-call engineer reading a task log knows what to fix, and callers can
catch exactly what they mean to (e.g. retry :class:`ConcurrentWriteError`, never
:class:`SchemaMismatchError`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lime_model.errors import LimeRankError

log = logging.getLogger(__name__)

__all__ = [
    "ConcurrentWriteError",
    "ConfigError",
    "DeploymentError",
    "EmptyCatalogueError",
    "ErrorWithFields",
    "FaultInjectionError",
    "FaultSpecError",
    "GpuUnavailableError",
    "InvalidPartitionValueError",
    "LakehouseNotFoundError",
    "LimeRankError",
    "MissingDataFileError",
    "ModelVersionMismatchError",
    "NoRowReturnedError",
    "NonFiniteValueError",
    "NullValueError",
    "PackEnvError",
    "PartitionNotFoundError",
    "PartitionOutsideOverwriteError",
    "QualityGateError",
    "SchemaMismatchError",
    "SparkConfigError",
    "TableError",
    "TableNotFoundError",
    "TopKTooLargeError",
    "UnsupportedModelError",
    "UnsupportedOnEngineError",
    "UnsupportedTableFeatureError",
]


class ConfigError(LimeRankError, ValueError):
    """A job configuration (argv, DAG conf) is invalid; raised before any work."""


class SparkConfigError(ConfigError):
    """The Spark settings cannot work (e.g. GPU resources under a local[N] master)."""


class DeploymentError(LimeRankError):
    """A local deployment (standalone cluster, Airflow services) did not come up or did not
    reach the expected state; the message names the daemon or run and where its log is."""


class HttpStatusError(DeploymentError):
    """A local service answered a request with an HTTP error status (kept in ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TableError(LimeRankError):
    """Base class of table-layer errors."""


FIELDS_NOTE = "lime-rank error fields: "


class ErrorWithFields(TableError):
    """An error built from fields (``.table``, ``.missing``, ...) rather than from a message.

    A Spark task's exception reaches the driver only as the worker's traceback text, so the
    constructor's fields ride along as an exception note: Python prints notes under the
    message line of a traceback, but not in ``str(exc)`` (the audit and the CLI keep the plain
    message).  :func:`reraise_task_error` reads the note back and calls ``cls(**fields)``.
    """

    def _keep_fields(self, **fields: Any) -> None:
        self._fields = fields
        self.add_note(FIELDS_NOTE + json.dumps(fields, sort_keys=True))

    def __reduce__(self) -> tuple[Any, ...]:
        # the default pickling calls cls(message), which these constructors do not take
        return (_rebuild, (type(self), self._fields))


def _rebuild(cls: type[ErrorWithFields], fields: Mapping[str, Any]) -> ErrorWithFields:
    return cls(**fields)


class LakehouseNotFoundError(TableError):
    """The lakehouse root folder does not exist (a typo must not create a new, empty lakehouse)."""


class TableNotFoundError(ErrorWithFields):
    """A table that must exist is not a Delta table."""

    def __init__(self, table: str, uri: str) -> None:
        super().__init__(f"table {table!r} does not exist (no Delta log at {uri})")
        self.table, self.uri = table, uri
        self._keep_fields(table=table, uri=uri)


class PartitionNotFoundError(ErrorWithFields):
    """A partition that must exist has no rows."""

    def __init__(self, table: str, partition: Mapping[str, str], hint: str = "") -> None:
        spec = ", ".join(f"{k}={v}" for k, v in partition.items())
        super().__init__(f"table {table!r} has no rows in partition {spec}{hint}")
        self.table, self.partition = table, dict(partition)
        self._keep_fields(table=table, partition=self.partition, hint=hint)


class SchemaMismatchError(ErrorWithFields):
    """Columns missing, unexpected or of the wrong type, named one by one."""

    def __init__(
        self,
        table: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        wrong_type: Mapping[str, tuple[str, str]] | None = None,
        hint: str = "",
    ) -> None:
        # tuples, also when rebuilt from JSON fields (lists)
        wrong_type = {col: (str(got), str(want)) for col, (got, want) in (wrong_type or {}).items()}
        parts = []
        if missing:
            parts.append(f"missing column(s) {sorted(missing)}")
        if unexpected:
            parts.append(f"unexpected column(s) {sorted(unexpected)}")
        for col, (got, want) in sorted(wrong_type.items()):
            parts.append(f"column {col!r} has type {got}, expected {want}")
        super().__init__(f"schema of table {table!r} does not match: " + "; ".join(parts) + hint)
        self.table = table
        self.missing, self.unexpected, self.wrong_type = list(missing), list(unexpected), wrong_type
        self.hint = hint
        self._keep_fields(table=table, missing=self.missing, unexpected=self.unexpected, wrong_type=wrong_type,
                          hint=hint)


class NullValueError(TableError):
    """A NOT NULL column received a null."""


class NonFiniteValueError(TableError):
    """A float column holds NaN or an infinity where a finite number is required."""


class InvalidPartitionValueError(TableError):
    """A partition value that cannot be a safe folder name."""


class MissingDataFileError(TableError):
    """A file about to be committed does not exist (delta-rs would commit it anyway)."""


class PartitionOutsideOverwriteError(TableError):
    """A file about to be committed lies outside the partition being overwritten."""


class ConcurrentWriteError(TableError):
    """The partition being overwritten changed since this writer read its snapshot."""


class UnsupportedTableFeatureError(TableError):
    """The table uses a Delta feature (deletion vectors, column mapping) that reading or
    re-adding its data files by the log's file list cannot honour."""


class UnsupportedOnEngineError(TableError):
    """The operation is not available on the lakehouse's table engine."""


class SourceOrderUnavailableError(TableError):
    """A table read whose rows' source position (data file, row index) Spark cannot give: events
    with equal timestamps would have no defined order."""


class NoRowReturnedError(LimeRankError):
    """A Spark query that always returns a row (an aggregate without grouping, ``DESCRIBE DETAIL`` of an
    existing table) returned none."""


class ModelVersionMismatchError(LimeRankError):
    """Two inputs were produced by different model versions."""


class EmptyCatalogueError(LimeRankError):
    """The candidate catalogue has no item the model can score."""


class TopKTooLargeError(ConfigError):
    """K exceeds the number of candidates."""


class UnsupportedModelError(LimeRankError):
    """The checkpoint's model type cannot produce link embeddings for the pipeline."""


class GpuUnavailableError(LimeRankError):
    """Spark assigned a GPU to the task but CUDA is not usable in the worker."""


class QualityGateError(LimeRankError):
    """The published output failed a data-quality check; nothing was published."""


class PackEnvError(LimeRankError):
    """The executors' environment cannot be packed (``lime-rank pack-env``): not a venv, another Python,
    an archive format Spark cannot unpack, an existing archive, a distribution without its file list."""


class FaultSpecError(ConfigError):
    """``$LIME_RANK_FAULT`` (test-only fault injection, pipelines/faults.py) is malformed."""


class FaultInjectionError(LimeRankError):
    """An injected fault could not be carried out as asked (tests only)."""


# the last line of a traceback entry: ``[module.]Class: message`` at the start of a line
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+Error): (.*)$", re.MULTILINE)


def reraise_task_error(exc: BaseException) -> None:
    """Re-raise a product error that a Spark task raised as its own class, with its attributes.

    Spark wraps exceptions from Python workers in ``PythonException`` whose text holds the
    worker's traceback.  The FIRST ``<module>.<Class>: message`` line of one of our classes
    is turned back into that class: in a chain of exceptions Python prints the innermost
    (first raised) one first, and that is the cause to fix; later ones wrap it.  Errors
    with fields (:class:`ErrorWithFields`) are rebuilt from the fields note printed under
    that line.  Returns silently when the failure is not one of ours.
    """
    text = str(exc)
    classes = _error_classes()
    for match in _ERROR_LINE.finditer(text):
        cls = classes.get(match.group(1))
        if cls is not None:
            raise _rebuilt_error(cls, match.group(2).strip(), text[match.end():]) from exc


def _rebuilt_error(cls: type[LimeRankError], message: str, after: str) -> LimeRankError:
    """``cls`` from its traceback line: ``message``, and for errors with fields the note in ``after``."""
    if not issubclass(cls, ErrorWithFields):
        return cls(message)
    fields = _fields_note(after)
    if fields is not None:
        return cls(**fields)
    # e.g. a traceback formatter that drops notes: keep the message and the nearest class
    # that takes one, rather than an instance of ``cls`` missing its attributes
    log.warning("task error %s came without its fields note; re-raised as TableError", cls.__name__)
    return TableError(f"{cls.__name__}: {message}")


def _fields_note(after: str) -> dict[str, Any] | None:
    """The fields note among the lines right after an error line (up to the next blank line)."""
    for line in after.lstrip("\n").splitlines():
        if not line.strip():
            return None
        if line.startswith(FIELDS_NOTE):
            fields = json.loads(line[len(FIELDS_NOTE):])
            return fields if isinstance(fields, dict) else None
    return None


def _error_classes() -> dict[str, type[LimeRankError]]:
    """Our error classes by name (those of lime_model.errors and of this module)."""
    import lime_model.errors as model_errors

    classes: dict[str, type[LimeRankError]] = {}
    for names in (vars(model_errors), globals()):
        for name, obj in names.items():
            if isinstance(obj, type) and issubclass(obj, LimeRankError):
                classes[name] = obj
    return classes
