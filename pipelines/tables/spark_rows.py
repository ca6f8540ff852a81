"""The row of a Spark query that always returns one (an aggregate without grouping, ``DESCRIBE DETAIL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.errors import NoRowReturnedError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row


def first_row(frame: DataFrame, what: str) -> Row:
    """The first row of ``frame``, a query that must return one; ``what`` names it in the error.

    pyspark types ``head()`` as ``Row | None`` (None: no rows).  For these queries None would be a
    Spark fault: it is named here rather than surfacing as a ``TypeError`` on ``None`` further on.
    """
    row = frame.head()
    if row is None:
        raise NoRowReturnedError(f"{what} returned no row")
    return row
