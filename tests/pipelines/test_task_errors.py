"""Errors raised inside Spark tasks come back to the driver as their own class, attributes and all.

Spark hands the driver only the worker's traceback text (``PythonException``); these tests
feed :func:`reraise_task_error` the text Python's traceback module prints for real
exceptions, as the worker does, so no Spark session is needed.
"""

from __future__ import annotations

import pickle
import traceback

import pytest

from pipelines.errors import (
    ConfigError,
    NullValueError,
    PartitionNotFoundError,
    SchemaMismatchError,
    TableError,
    TableNotFoundError,
    reraise_task_error,
)


class FakePythonException(Exception):
    """Stands in for pyspark's PythonException: only its text matters."""


def worker_text(error: BaseException) -> FakePythonException:
    """What the driver receives for ``error`` raised in a Python worker."""
    lines = traceback.format_exception(error)
    return FakePythonException("An exception was thrown from the Python worker:\n" + "".join(lines))


def raised(error: BaseException) -> BaseException:
    """``error`` with a traceback, as it is after a real ``raise``."""
    try:
        raise error
    except BaseException as exc:
        return exc


def test_task_error_is_rebuilt_with_its_attributes() -> None:
    original = raised(SchemaMismatchError("user_links", missing=["weight"], wrong_type={"ds": ("int", "string")}))
    with pytest.raises(SchemaMismatchError) as info:
        reraise_task_error(worker_text(original))
    rebuilt = info.value
    assert (rebuilt.table, rebuilt.missing, rebuilt.unexpected) == ("user_links", ["weight"], [])
    assert rebuilt.wrong_type == {"ds": ("int", "string")}
    assert str(rebuilt) == str(original)


@pytest.mark.parametrize("error", [
    TableNotFoundError("items", "/lake/items"),
    PartitionNotFoundError("events", {"event_date": "2024-01-02"}, hint="; load events first"),
])
def test_every_error_with_fields_is_rebuilt_equal(error: TableError) -> None:
    with pytest.raises(type(error)) as info:
        reraise_task_error(worker_text(raised(error)))
    assert vars(info.value) == vars(error) and str(info.value) == str(error)


def test_task_error_rebuilt_is_the_first_raised_of_a_chain() -> None:
    """The innermost error is the cause the on-call engineer must fix; wrappers come after it."""
    try:
        try:
            raise NullValueError("table 'user_links': column 'weight' is null")
        except NullValueError as inner:
            raise ConfigError("the task failed") from inner
    except ConfigError as outer:
        text = worker_text(outer)
    with pytest.raises(NullValueError, match=r"^table 'user_links': column 'weight' is null$"):
        reraise_task_error(text)


def test_an_error_name_inside_a_message_is_not_a_match() -> None:
    text = worker_text(raised(ValueError("bad value; see NullValueError: in the docs")))
    reraise_task_error(text)  # not one of ours: returns, the caller re-raises the original


def test_errors_with_fields_survive_pickling() -> None:
    error = PartitionNotFoundError("events", {"event_date": "2024-01-02"})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is PartitionNotFoundError and vars(copy) == vars(error) and str(copy) == str(error)


def test_error_with_fields_but_no_note_is_a_table_error_not_a_hollow_instance(
        caplog: pytest.LogCaptureFixture) -> None:
    text = FakePythonException("Traceback (most recent call last):\n" "pipelines.errors.TableNotFoundError: "
                               "table 'items' does not exist (no Delta log at /x)\n")
    with pytest.raises(TableError) as info:
        reraise_task_error(text)
    assert type(info.value) is TableError
    assert str(info.value) == "TableNotFoundError: table 'items' does not exist (no Delta log at /x)"
    assert "came without its fields note" in caplog.text
