"""The tables of the lakehouse: names, schemas, partitioning (DESIGN.md §2).

One Arrow schema per table is the source of truth; the Spark schema is derived
from it.  Partition columns are strings (Hive-style ``k=v`` folders, Delta
partition values) and come first in the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.errors import SchemaMismatchError

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

UTC_MICROS = pa.timestamp("us", tz="UTC")

# column -> the type names it may have (Spark ``simpleString`` or Arrow type text)
ColumnTypes = Mapping[str, tuple[str, ...]]


def _arrow_type_name(t: pa.DataType) -> str:
    """Arrow type text with list field names and item nullability, and large_ variants, normalised."""

    def norm(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(norm(t.value_type))
        if pa.types.is_large_string(t):
            return pa.string()
        return t

    return str(norm(t))


def column_types(schema: pa.Schema | StructType) -> dict[str, str]:
    """Each column's type name: Arrow's type text (see :func:`_arrow_type_name`), or Spark's
    ``simpleString``, which shows no nullability at any nesting level."""
    if isinstance(schema, pa.Schema):
        return {f.name: _arrow_type_name(f.type) for f in schema}
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def check_schema(table: str, actual: pa.Schema | StructType, expected: pa.Schema | StructType | ColumnTypes, *,
                 allow_extra: bool = False, hint: str = "") -> None:
    """The one schema check: ``actual`` has every ``expected`` column with its type (or one of the
    types a :data:`ColumnTypes` contract accepts), and no other column unless ``allow_extra``.

    Both sides are Arrow schemas or both Spark schemas (compared by type name, nullability
    ignored); raises :class:`SchemaMismatchError` naming every missing, unexpected or retyped
    column, with ``hint`` (what to do about an existing table's schema) appended.
    """
    have = column_types(actual)
    want = expected if isinstance(expected, Mapping) else {c: (t,) for c, t in column_types(expected).items()}
    missing = [c for c in want if c not in have]
    unexpected = [] if allow_extra else [c for c in have if c not in want]
    wrong = {c: (have[c], " or ".join(types)) for c, types in want.items() if c in have and have[c] not in types}
    if missing or unexpected or wrong:
        raise SchemaMismatchError(table, missing, unexpected, wrong, hint)


@dataclass(frozen=True)
class TableSpec:
    """A table's contract: ``schema`` includes the ``partition_by`` columns.

    ``uncompressed``: columns written without compression (dense float vectors: zstd saves
    under 10% of their size but makes every scan of them several times slower).
    ``outdated_hint``: what an operator does when an existing table's schema differs from this
    one (e.g. after an upgrade added columns), appended to the :class:`SchemaMismatchError`.
    """

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    description: str = ""
    uncompressed: tuple[str, ...] = ()
    outdated_hint: str = ""

    def __post_init__(self) -> None:
        for col in self.partition_by:
            field = self.schema.field(col)
            assert pa.types.is_string(field.type), f"{self.name}.{col}: partition columns are strings"
        for col in self.uncompressed:
            assert col in self.schema.names and col not in self.partition_by, f"{self.name}.{col}"

    @cached_property
    def compression(self) -> dict[str, str]:
        """Parquet codec per data column: zstd, except the ``uncompressed`` ones."""
        return {f.name: "none" if f.name in self.uncompressed else "zstd" for f in self.data_schema}

    @cached_property
    def data_schema(self) -> pa.Schema:
        """The schema of the Parquet files: partition columns live in folder names, not in files."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])

    @cached_property
    def spark_schema(self) -> StructType:
        from pyspark.sql.pandas.types import from_arrow_schema

        return from_arrow_schema(self.schema)

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


EVENTS = TableSpec(
    "events",
    pa.schema([
        _f("event_date", pa.string()),
        _f("user_id", pa.int64()),
        _f("item_id", pa.int64()),
        _f("ts", UTC_MICROS),
    ]),
    partition_by=("event_date",),
    description="input: one row per interaction (event_date = UTC date of ts)",
)

ITEMS = TableSpec(
    "items",
    pa.schema([_f("item_id", pa.int64()), _f("title", pa.string(), nullable=True)]),
    description="input: the catalogue of items that may be recommended",
)

USER_HISTORIES = TableSpec(
    "user_histories",
    pa.schema([
        _f("ds", pa.string()),
        _f("user_id", pa.int64()),
        _f("item_ids", pa.list_(pa.field("element", pa.int64(), nullable=False))),
        _f("ts", pa.list_(pa.field("element", UTC_MICROS, nullable=False))),
        _f("n", pa.int32()),
        _f("seen_item_ids", pa.list_(pa.field("element", pa.int64(), nullable=False))),
        _f("n_seen", pa.int32()),
        _f("extracted_ds", pa.string()),
    ]),
    partition_by=("ds",),
    description="last N events per user up to the end of ds, oldest first, ids known to the model; "
                "seen_item_ids: every distinct known item of the user's events up to ds (ascending), "
                "the items the scorer excludes; extracted_ds: the day whose run computed the row from "
                "events (before ds: an incremental run copied it unchanged from the day before)",
    # derived data: extract_histories rebuilds any day from events, so an old table is dropped, not migrated
    outdated_hint="; user_histories is derived data: drop the table (delete its folder) and re-run "
                  "extract-histories for the days you need (docs/operations.md, 'Upgrades')",
)

CANDIDATE_LINK_WEIGHTS = TableSpec(
    "candidate_link_weights",
    pa.schema([
        _f("model_version", pa.string()),
        _f("item_id", pa.int64()),
        _f("link_weights", pa.list_(pa.field("element", pa.float32(), nullable=False))),
        _f("cand_vec", pa.list_(pa.field("element", pa.float32(), nullable=False))),
        _f("bias", pa.float32()),
    ]),
    partition_by=("model_version",),
    description="per model version and item: W_c (H*ell), candidate vector (d), bias",
    uncompressed=("link_weights", "cand_vec"),
)

USER_LINKS = TableSpec(
    "user_links",
    pa.schema([
        _f("ds", pa.string()),
        _f("model_version", pa.string()),
        _f("user_id", pa.int64()),
        _f("l_p", pa.list_(pa.field("element", pa.float32(), nullable=False))),
    ]),
    partition_by=("ds",),
    description="personalised link embeddings L_P (ell*d, row-major) per user with a usable history",
    uncompressed=("l_p",),
)

RECOMMENDATIONS = TableSpec(
    "recommendations",
    pa.schema([
        _f("ds", pa.string()),
        _f("user_id", pa.int64()),
        _f("rank", pa.int32()),
        _f("item_id", pa.int64()),
        _f("score", pa.float32()),
        _f("model_version", pa.string()),
        _f("source", pa.string()),
    ]),
    partition_by=("ds",),
    description="top-K per user; source is 'model' or 'popular' (cold start)",
)

USER_CANDIDATES = TableSpec(
    "user_candidates",
    pa.schema([
        _f("ds", pa.string()),
        _f("user_id", pa.int64()),
        _f("item_ids", pa.list_(pa.field("element", pa.int64(), nullable=False))),
    ]),
    partition_by=("ds",),
    description="optional input: per-user candidate lists (e.g. from a retrieval stage) to rank instead of "
                "the whole catalogue",
)

RUN_AUDIT = TableSpec(
    "run_audit",
    pa.schema([
        _f("ds", pa.string()),
        _f("job", pa.string()),
        _f("run_id", pa.string()),
        _f("status", pa.string()),
        _f("model_version", pa.string(), nullable=True),
        _f("started_at", UTC_MICROS),
        _f("finished_at", UTC_MICROS),
        _f("table_version", pa.int64(), nullable=True),
        _f("metrics", pa.string()),
    ]),
    partition_by=("ds",),
    description="append-only log: one row per job run (metrics is a JSON object of counts and timings)",
)

ALL_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (EVENTS, ITEMS, USER_HISTORIES, CANDIDATE_LINK_WEIGHTS, USER_LINKS, RECOMMENDATIONS,
                 USER_CANDIDATES, RUN_AUDIT)
}
