"""Errors raised by the Spark-side library and the jobs.

One class per failure, each naming the table, column and value involved, so
that an on-call engineer reading a task log knows what to fix, and callers can
catch exactly what they mean to (e.g. retry :class:`ConcurrentWriteError`, never
:class:`SchemaMismatchError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lime_model.errors import LimeRankError

__all__ = [
    "ConcurrentWriteError",
    "ConfigError",
    "EmptyCatalogueError",
    "FaultInjectionError",
    "FaultSpecError",
    "GpuUnavailableError",
    "InvalidPartitionValueError",
    "LakehouseNotFoundError",
    "LimeRankError",
    "MissingDataFileError",
    "ModelVersionMismatchError",
    "NonFiniteValueError",
    "NullValueError",
    "PartitionNotFoundError",
    "PartitionOutsideOverwriteError",
    "QualityGateError",
    "SchemaMismatchError",
    "SparkConfigError",
    "TableError",
    "TableNotFoundError",
    "TopKTooLargeError",
    "UnsupportedModelError",
]


class ConfigError(LimeRankError, ValueError):
    """A job configuration (argv, DAG conf) is invalid; raised before any work."""


class SparkConfigError(ConfigError):
    """The Spark settings cannot work (e.g. GPU resources under a local[N] master)."""


class TableError(LimeRankError):
    """Base class of table-layer errors."""


class LakehouseNotFoundError(TableError):
    """The lakehouse root folder does not exist (a typo must not create a new, empty lakehouse)."""


class TableNotFoundError(TableError):
    """A table that must exist is not a Delta table."""

    def __init__(self, table: str, uri: str) -> None:
        super().__init__(f"table {table!r} does not exist (no Delta log at {uri})")
        self.table, self.uri = table, uri


class PartitionNotFoundError(TableError):
    """A partition that must exist has no rows."""

    def __init__(self, table: str, partition: Mapping[str, str], hint: str = "") -> None:
        spec = ", ".join(f"{k}={v}" for k, v in partition.items())
        super().__init__(f"table {table!r} has no rows in partition {spec}{hint}")
        self.table, self.partition = table, dict(partition)


class SchemaMismatchError(TableError):
    """Columns missing, unexpected or of the wrong type, named one by one."""

    def __init__(
        self,
        table: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        wrong_type: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        wrong_type = dict(wrong_type or {})
        parts = []
        if missing:
            parts.append(f"missing column(s) {sorted(missing)}")
        if unexpected:
            parts.append(f"unexpected column(s) {sorted(unexpected)}")
        for col, (got, want) in sorted(wrong_type.items()):
            parts.append(f"column {col!r} has type {got}, expected {want}")
        super().__init__(f"schema of table {table!r} does not match: " + "; ".join(parts))
        self.table = table
        self.missing, self.unexpected, self.wrong_type = list(missing), list(unexpected), wrong_type


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


class FaultSpecError(ConfigError):
    """``$LIME_RANK_FAULT`` (test-only fault injection, pipelines/faults.py) is malformed."""


class FaultInjectionError(LimeRankError):
    """An injected fault could not be carried out as asked (tests only)."""


def reraise_task_error(exc: BaseException) -> None:
    """Re-raise a product error that a Spark task raised as its own class.

    Spark wraps exceptions from Python workers in ``PythonException`` whose text
    holds the worker's traceback; the last ``<module>.<Class>: message`` line of
    one of our classes is turned back into that class so callers (and the on-call
    engineer reading the log) see e.g. ``NullValueError`` instead of a Py4J dump.
    Returns silently when the failure is not one of ours.
    """
    import re

    text = str(exc)
    found: tuple[type[LimeRankError], str] | None = None
    for match in re.finditer(r"(?:[\w.]+\.)?(\w+Error): ([^\n]*)", text):
        cls = _simple_error_classes().get(match.group(1))
        if cls is not None:
            found = (cls, match.group(2).strip())
    if found is None:
        return
    cls, message = found
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    raise error from exc


def _simple_error_classes() -> dict[str, type[LimeRankError]]:
    """Our error classes that take a plain message (constructible from a log line)."""
    import lime_model.errors as model_errors

    classes: dict[str, type[LimeRankError]] = {}
    for module in (model_errors, globals()):
        names = vars(module) if not isinstance(module, dict) else module
        for name, obj in names.items():
            if isinstance(obj, type) and issubclass(obj, LimeRankError):
                classes[name] = obj
    return classes
