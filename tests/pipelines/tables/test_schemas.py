"""The one schema check (``pipelines.tables.schemas.check_schema``): Arrow and Spark schemas, table
specs and the input contracts of tables other teams own."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.errors import SchemaMismatchError
from pipelines.tables.input_contracts import EVENTS_COLUMNS, ITEMS_COLUMNS
from pipelines.tables.schemas import RECOMMENDATIONS, USER_LINKS, check_schema, column_types


def mismatch(*args, **kwargs) -> SchemaMismatchError:
    with pytest.raises(SchemaMismatchError) as info:
        check_schema(*args, **kwargs)
    return info.value


def test_arrow_missing_unexpected_and_retyped_columns_are_all_named() -> None:
    expected = pa.schema([("user_id", pa.int64()), ("score", pa.float32()), ("ds", pa.string())])
    actual = pa.schema([("user_id", pa.int32()), ("score", pa.float32()), ("extra", pa.bool_())])
    err = mismatch("t", actual, expected, hint="; rebuild it")
    assert (err.table, err.missing, err.unexpected) == ("t", ["ds"], ["extra"])
    assert err.wrong_type == {"user_id": ("int32", "int64")}
    assert str(err) == ("schema of table 't' does not match: missing column(s) ['ds']; unexpected column(s) "
                        "['extra']; column 'user_id' has type int32, expected int64; rebuild it")


def test_arrow_extra_columns_pass_only_when_allowed() -> None:
    expected = pa.schema([("a", pa.int64())])
    actual = pa.schema([("a", pa.int64()), ("b", pa.string())])
    check_schema("t", actual, expected, allow_extra=True)
    assert mismatch("t", actual, expected).unexpected == ["b"]


def test_arrow_large_variants_list_field_names_and_item_nullability_are_ignored() -> None:
    expected = pa.schema([("ids", pa.list_(pa.int64())), ("name", pa.string()),
                          ("nested", pa.list_(pa.list_(pa.float32())))])
    actual = pa.schema([
        ("ids", pa.large_list(pa.field("element", pa.int64(), nullable=False))),
        ("name", pa.large_string()),
        ("nested", pa.list_(pa.large_list(pa.float32()))),
    ])
    check_schema("t", actual, expected)
    assert column_types(actual) == column_types(expected)


def test_arrow_column_nullability_is_ignored_but_types_are_not() -> None:
    expected = pa.schema([pa.field("a", pa.int64(), nullable=False)])
    check_schema("t", pa.schema([pa.field("a", pa.int64(), nullable=True)]), expected)
    err = mismatch("t", pa.schema([("a", pa.list_(pa.int32()))]), pa.schema([("a", pa.list_(pa.int64()))]))
    assert err.wrong_type == {"a": ("list<item: int32>", "list<item: int64>")}


def test_spark_nullability_is_ignored_at_every_nesting_level() -> None:
    expected = StructType([
        StructField("v", ArrayType(FloatType(), containsNull=False), nullable=False),
        StructField("m", MapType(StringType(), LongType(), valueContainsNull=False)),
        StructField("s", StructType([StructField("x", IntegerType(), nullable=False)])),
    ])
    actual = StructType([
        StructField("v", ArrayType(FloatType(), containsNull=True)),
        StructField("m", MapType(StringType(), LongType(), valueContainsNull=True)),
        StructField("s", StructType([StructField("x", IntegerType(), nullable=True)])),
    ])
    check_schema("t", actual, expected)


def test_spark_retyped_and_renamed_nested_fields_are_mismatches() -> None:
    expected = StructType([StructField("s", StructType([StructField("x", IntegerType())])),
                           StructField("v", ArrayType(FloatType()))])
    actual = StructType([StructField("s", StructType([StructField("y", IntegerType())])),
                         StructField("v", ArrayType(LongType()))])
    err = mismatch("t", actual, expected)
    assert err.wrong_type == {"s": ("struct<y:int>", "struct<x:int>"), "v": ("array<bigint>", "array<float>")}


def test_table_specs_match_themselves_in_both_flavours() -> None:
    for spec in (RECOMMENDATIONS, USER_LINKS):
        check_schema(spec.name, spec.schema, spec.schema)
        check_schema(spec.name, spec.spark_schema, spec.spark_schema)


def test_input_contract_accepts_any_listed_type_and_extra_columns() -> None:
    events = StructType([StructField("user_id", IntegerType()), StructField("item_id", LongType()),
                         StructField("ts", TimestampType()), StructField("country", StringType())])
    check_schema("events", events, EVENTS_COLUMNS, allow_extra=True)
    err = mismatch("items", StructType([StructField("item_id", StringType())]), ITEMS_COLUMNS, allow_extra=True)
    assert err.missing == [] and err.unexpected == []
    assert err.wrong_type == {"item_id": ("string", "tinyint or smallint or int or bigint")}
    assert mismatch("events", StructType([StructField("user_id", LongType())]), EVENTS_COLUMNS,
                    allow_extra=True).missing == ["item_id", "ts"]
