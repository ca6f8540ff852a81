"""Checking input tables that other teams own (events, items, candidate tables).

Inputs may carry extra columns and slightly different integer widths; what they
must have is named here, and anything else is a :class:`SchemaMismatchError`
naming the table and the columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipelines.errors import SchemaMismatchError

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

INTEGER = ("tinyint", "smallint", "int", "bigint")
TIMESTAMP = ("timestamp", "timestamp_ntz")
STRING = ("string",)
FLOAT_ARRAY = ("array<float>",)
FLOAT = ("float",)


def require_columns(table: str, schema: StructType, required: Mapping[str, tuple[str, ...]]) -> None:
    """Every ``required`` column exists with one of its accepted Spark types."""
    have = {f.name: f.dataType.simpleString() for f in schema.fields}
    missing = [c for c in required if c not in have]
    wrong = {
        c: (have[c], " or ".join(types)) for c, types in required.items() if c in have and have[c] not in types
    }
    if missing or wrong:
        raise SchemaMismatchError(table, missing=missing, wrong_type=wrong)
