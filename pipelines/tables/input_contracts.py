"""The contracts of input tables that other teams own (``events``, ``items``).

Inputs may carry extra columns and slightly different integer widths; what they must have is
named here, as the Spark types each column may have, and checked with
:func:`pipelines.tables.schemas.check_schema` (``allow_extra=True``): anything else is a
:class:`SchemaMismatchError` naming the table and the columns.
"""

from __future__ import annotations

from pipelines.tables.schemas import ColumnTypes

INTEGER = ("tinyint", "smallint", "int", "bigint")
TIMESTAMP = ("timestamp", "timestamp_ntz")

EVENTS_COLUMNS: ColumnTypes = {"user_id": INTEGER, "item_id": INTEGER, "ts": TIMESTAMP}
ITEMS_COLUMNS: ColumnTypes = {"item_id": INTEGER}
