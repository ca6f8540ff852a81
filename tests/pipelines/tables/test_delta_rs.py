"""The delta-rs table layer: atomic, repeatable writes and exact snapshot reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipelines.errors import (
    ConcurrentWriteError,
    ConfigError,
    InvalidPartitionValueError,
    MissingDataFileError,
    NonFiniteValueError,
    NullValueError,
    PartitionOutsideOverwriteError,
    SchemaMismatchError,
    TableNotFoundError,
)
from pipelines.tables import delta_spark_available, open_lakehouse
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.parquet_files import DataFile, ParquetFileWriter
from pipelines.tables.schemas import RECOMMENDATIONS, USER_HISTORIES
from pipelines.tables.store import WriteRequest

pytestmark = pytest.mark.spark


def recs(ds: str, users: range, score: float = 1.0, version: str = "v1") -> pa.Table:
    n = len(users)
    return pa.table({
        "ds": [ds] * n, "user_id": list(users), "rank": [1] * n, "item_id": [u * 10 for u in users],
        "score": [score + u for u in users], "model_version": [version] * n, "source": ["model"] * n,
    }, schema=RECOMMENDATIONS.schema)


def as_rows(table: pa.Table) -> list[tuple]:
    cols = RECOMMENDATIONS.column_names
    return sorted(tuple(r[c] for c in cols) for r in table.select(cols).to_pylist())


def spark_rows(df) -> list[tuple]:
    cols = RECOMMENDATIONS.column_names
    return sorted(tuple(getattr(r, c) for c in cols) for r in df.select(*cols).collect())


def delta_rows(uri: str, version: int | None = None) -> list[tuple]:
    table = DeltaTable(uri, version=version)
    return as_rows(pa.table(table.to_pyarrow_table()))


def test_append_overwrite_partition_and_time_travel_agree_between_spark_and_deltalake(spark, store) -> None:
    uri = store.uri("recommendations")
    day1, day2 = recs("2024-01-01", range(0, 5)), recs("2024-01-02", range(5, 9))
    r0 = store.write(spark.createDataFrame(day1), WriteRequest(RECOMMENDATIONS, "append", "a0"))
    r1 = store.write(spark.createDataFrame(day2), WriteRequest(RECOMMENDATIONS, "append", "a1"))
    assert (r0.version, r1.version, r1.rows) == (0, 1, 4)
    replacement = recs("2024-01-02", range(5, 7), score=100.0)
    r2 = store.write(spark.createDataFrame(replacement),
                     WriteRequest(RECOMMENDATIONS, "overwrite", "a2", partition={"ds": "2024-01-02"}))
    assert r2.version == 2

    expected_v1 = as_rows(pa.concat_tables([day1, day2]))
    expected_v2 = as_rows(pa.concat_tables([day1, replacement]))
    assert spark_rows(store.read(RECOMMENDATIONS)) == expected_v2 == delta_rows(uri)
    assert spark_rows(store.read(RECOMMENDATIONS, version=1)) == expected_v1 == delta_rows(uri, 1)
    assert spark_rows(store.read(RECOMMENDATIONS, version=0)) == as_rows(day1) == delta_rows(uri, 0)
    # the untouched partition kept its files; only ds=2024-01-02 was replaced
    assert spark_rows(store.read(RECOMMENDATIONS, partition={"ds": "2024-01-01"})) == as_rows(day1)
    history = DeltaTable(uri).history()
    assert [h["operation"] for h in history][:1] == ["WRITE"]


def test_read_keeps_table_column_order_and_types(spark, store) -> None:
    store.write(spark.createDataFrame(recs("2024-01-01", range(3))), WriteRequest(RECOMMENDATIONS, "append", "x"))
    df = store.read(RECOMMENDATIONS)
    assert df.columns == RECOMMENDATIONS.column_names
    assert [f.dataType.simpleString() for f in df.schema.fields] == [
        "string", "bigint", "int", "bigint", "float", "string", "string"]


def test_empty_partition_reads_as_empty_frame_with_schema(spark, store) -> None:
    store.write(spark.createDataFrame(recs("2024-01-01", range(3))), WriteRequest(RECOMMENDATIONS, "append", "x"))
    df = store.read(RECOMMENDATIONS, partition={"ds": "2099-01-01"})
    assert df.count() == 0
    assert df.columns == RECOMMENDATIONS.column_names


def test_column_bounds_come_from_the_file_statistics_of_the_partition(store) -> None:
    assert store.column_bounds(RECOMMENDATIONS, "user_id") is None  # no table yet
    store.write_arrow(recs("2024-01-01", range(2, 6), version="v1"), WriteRequest(RECOMMENDATIONS, "append", "a"))
    store.write_arrow(recs("2024-01-01", range(9, 11), version="v1"), WriteRequest(RECOMMENDATIONS, "append", "b"))
    store.write_arrow(recs("2024-01-02", range(0, 3), version="v2"), WriteRequest(RECOMMENDATIONS, "append", "c"))
    day1 = {"ds": "2024-01-01"}
    assert store.column_bounds(RECOMMENDATIONS, "user_id", day1) == (2, 10)  # over both files
    assert store.column_bounds(RECOMMENDATIONS, "model_version", day1) == ("v1", "v1")
    assert store.column_bounds(RECOMMENDATIONS, "model_version") == ("v1", "v2")
    assert store.column_bounds(RECOMMENDATIONS, "user_id", {"ds": "2024-01-09"}) is None  # no file
    assert store.column_bounds(RECOMMENDATIONS, "score", day1) is None  # floats carry no min/max here
    assert store.column_bounds(RECOMMENDATIONS, "no_such_column", day1) is None


def test_write_mapped_commits_what_each_task_makes_and_checks_its_schema(spark, store) -> None:
    users = spark.createDataFrame(pa.table({"u": pa.array(range(7), pa.int64())})).repartition(3)

    def make_recs(batches):
        for batch in batches:
            yield from recs("2024-01-01", batch.column("u").to_pylist()).to_batches()

    result = store.write_mapped(users, make_recs, WriteRequest(RECOMMENDATIONS, "append", "mapped"))
    assert (result.rows, result.skipped) == (7, False)
    assert spark_rows(store.read(RECOMMENDATIONS)) == as_rows(recs("2024-01-01", range(7)))
    assert store.write_mapped(users, make_recs, WriteRequest(RECOMMENDATIONS, "append", "mapped")).skipped

    def without_source(batches):
        for batch in make_recs(batches):
            yield batch.drop_columns(["source"])

    before = store.version(RECOMMENDATIONS)
    with pytest.raises(SchemaMismatchError, match=r"recommendations.*source"):
        store.write_mapped(users, without_source, WriteRequest(RECOMMENDATIONS, "append", "bad"))
    assert store.version(RECOMMENDATIONS) == before


def test_staged_rows_are_invisible_until_committed_and_discard_removes_their_files(spark, store) -> None:
    part = {"ds": "2024-01-02"}
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "seed"))
    staged = store.stage(spark.createDataFrame(recs("2024-01-02", range(5))).repartition(2),
                         WriteRequest(RECOMMENDATIONS, "overwrite", "run-1", partition=part, metadata={"top_k": 1}))
    assert spark_rows(staged.frame) == as_rows(recs("2024-01-02", range(5)))  # the gate reads these
    assert staged.own_frame is not None and spark_rows(staged.own_frame) == spark_rows(staged.frame)
    assert store.version(RECOMMENDATIONS) == 0 and store.read(RECOMMENDATIONS, partition=part).count() == 0
    result = store.commit_staged(staged)
    assert (result.version, result.rows, result.skipped) == (1, 5, False)
    assert spark_rows(store.read(RECOMMENDATIONS, partition=part)) == as_rows(recs("2024-01-02", range(5)))

    dropped = store.stage(spark.createDataFrame(recs("2024-01-02", range(3), score=7.0)),
                          WriteRequest(RECOMMENDATIONS, "overwrite", "run-2", partition=part))
    paths = [Path(store.uri("recommendations").removeprefix("file://")) / f.path for f in dropped.files]
    assert paths and all(p.exists() for p in paths)
    store.discard_staged(dropped)
    assert not any(p.exists() for p in paths)
    assert store.version(RECOMMENDATIONS) == 1
    assert spark_rows(store.read(RECOMMENDATIONS, partition=part)) == as_rows(recs("2024-01-02", range(5)))


def test_staged_rows_of_the_extra_inputs_are_kept_apart_from_the_frames_own(spark, store) -> None:
    """score_topk's incremental gate reads the scored rows (``own_frame``), not the copied ones."""
    part = {"ds": "2024-01-02"}

    def copied(batches):
        for _ in batches:
            pass
        yield from recs("2024-01-02", range(5, 7)).to_batches()

    staged = store.stage(spark.createDataFrame(recs("2024-01-02", range(3))),
                         WriteRequest(RECOMMENDATIONS, "overwrite", "run-1", partition=part),
                         extra=[(spark.createDataFrame(recs("2024-01-02", range(1))).coalesce(1), copied)])
    assert spark_rows(staged.own_frame) == as_rows(recs("2024-01-02", range(3)))
    assert spark_rows(staged.frame) == sorted(as_rows(recs("2024-01-02", range(3)))
                                              + as_rows(recs("2024-01-02", range(5, 7))))
    store.discard_staged(staged)


def test_staged_commit_refuses_a_partition_another_run_replaced_meanwhile(spark, store) -> None:
    part = {"ds": "2024-01-01"}
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "seed"))
    slow = store.stage(spark.createDataFrame(recs("2024-01-01", range(2), score=9.0)),
                       WriteRequest(RECOMMENDATIONS, "overwrite", "slow", partition=part))
    store.write_arrow(recs("2024-01-01", range(2), score=5.0),
                      WriteRequest(RECOMMENDATIONS, "overwrite", "fast", partition=part))
    with pytest.raises(ConcurrentWriteError, match="changed since this writer's snapshot"):
        store.commit_staged(slow)
    assert [r[4] for r in delta_rows(store.uri("recommendations"))] == [5.0, 6.0]


def test_read_arrow_reads_data_columns_of_one_partition(spark, store) -> None:
    store.write_arrow(recs("2024-01-01", range(3)), WriteRequest(RECOMMENDATIONS, "append", "d1"))
    store.write_arrow(recs("2024-01-02", range(3, 5)), WriteRequest(RECOMMENDATIONS, "append", "d2"))
    got = store.read_arrow(RECOMMENDATIONS, ["user_id", "score"], partition={"ds": "2024-01-02"})
    assert got.schema == pa.schema([RECOMMENDATIONS.schema.field("user_id"), RECOMMENDATIONS.schema.field("score")])
    assert sorted(got.column("user_id").to_pylist()) == [3, 4]
    assert store.read_arrow(RECOMMENDATIONS, ["user_id"], partition={"ds": "2030-01-01"}).num_rows == 0
    left_out = store.read_arrow(RECOMMENDATIONS, ["score"], partition={"ds": "2024-01-01"},
                                exclude_users=np.array([0, 2, 7], np.int64))  # user_id read, not returned
    assert left_out.column_names == ["score"] and left_out.num_rows == 1
    with pytest.raises(ValueError, match="data columns"):
        store.read_arrow(RECOMMENDATIONS, ["ds", "user_id"])
    with pytest.raises(TableNotFoundError):
        store.read_arrow(USER_HISTORIES, ["user_id"])


def test_retry_with_same_app_id_adds_nothing(spark, store) -> None:
    df = spark.createDataFrame(recs("2024-01-01", range(4)))
    first = store.write(df, WriteRequest(RECOMMENDATIONS, "append", "nightly:2024-01-01:run-7"))
    again = store.write(df, WriteRequest(RECOMMENDATIONS, "append", "nightly:2024-01-01:run-7"))
    assert not first.skipped and again.skipped
    assert again.version == first.version
    assert store.read(RECOMMENDATIONS).count() == 4
    assert store.committed_version(RECOMMENDATIONS, "nightly:2024-01-01:run-7") is not None
    assert store.committed_version(RECOMMENDATIONS, "never") is None


def test_failure_after_files_written_before_commit_leaves_table_unchanged(
    spark, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(spark.createDataFrame(recs("2024-01-01", range(3))), WriteRequest(RECOMMENDATIONS, "append", "ok"))
    before = delta_rows(store.uri("recommendations"))

    class DriverDied(RuntimeError):
        pass

    def die(*args, **kwargs):
        raise DriverDied("killed between file write and commit")

    monkeypatch.setattr(DeltaRsStore, "commit", die)
    with pytest.raises(DriverDied):
        store.write(spark.createDataFrame(recs("2024-01-01", range(3), score=50.0)),
                    WriteRequest(RECOMMENDATIONS, "overwrite", "dies", partition={"ds": "2024-01-01"}))
    monkeypatch.undo()
    files_on_disk = list(Path(store.uri("recommendations"), "ds=2024-01-01").glob("*.parquet"))
    assert len(files_on_disk) > len(DeltaTable(store.uri("recommendations")).file_uris())  # orphans exist
    assert delta_rows(store.uri("recommendations")) == before
    assert DeltaTable(store.uri("recommendations")).version() == 0
    # a rerun of the same run completes and replaces the partition
    rerun = store.write(spark.createDataFrame(recs("2024-01-01", range(3), score=50.0)),
                        WriteRequest(RECOMMENDATIONS, "overwrite", "dies", partition={"ds": "2024-01-01"}))
    assert rerun.version == 1
    assert [r[4] for r in delta_rows(store.uri("recommendations"))] == [50.0, 51.0, 52.0]


def _written_files(store: DeltaRsStore, table: pa.Table, prefix: str) -> list[DataFile]:
    writer = ParquetFileWriter(store.uri(RECOMMENDATIONS.name), RECOMMENDATIONS, prefix)
    return [DataFile.from_row(r) for b in writer(table.to_batches()) for r in b.to_pylist()]


def test_guard_missing_file(store) -> None:
    files = _written_files(store, recs("2024-01-01", range(2)), "m")
    Path(store.uri("recommendations"), files[0].path).unlink()
    with pytest.raises(MissingDataFileError, match="do not exist"):
        store.commit(WriteRequest(RECOMMENDATIONS, "append", "m", partition=None),
                     files,
                     expected_partition_state=None)
    assert not DeltaTable.is_deltatable(store.uri("recommendations"))


def test_guard_file_outside_overwritten_partition(store) -> None:
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "seed"))
    stray = _written_files(store, recs("2024-01-02", range(2)), "stray")
    with pytest.raises(PartitionOutsideOverwriteError, match=r"belong elsewhere, e\.g\. \['ds=2024-01-02/"):
        store.commit(WriteRequest(RECOMMENDATIONS, "overwrite", "o", partition={"ds": "2024-01-01"}),
                     stray,
                     expected_partition_state=store.partition_state(store.delta_table(RECOMMENDATIONS),
                                                                     {"ds": "2024-01-01"}))
    assert DeltaTable(store.uri("recommendations")).version() == 0


def test_guard_partition_changed_since_snapshot(store) -> None:
    part = {"ds": "2024-01-01"}
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "seed"))
    snapshot = store.partition_state(store.delta_table(RECOMMENDATIONS), part)
    mine = _written_files(store, recs("2024-01-01", range(2), score=9.0), "slow-writer")
    # another run overwrites the same partition in between
    store.write_arrow(recs("2024-01-01", range(2), score=5.0),
                      WriteRequest(RECOMMENDATIONS, "overwrite", "fast-writer", partition=part))
    with pytest.raises(ConcurrentWriteError, match="changed since this writer's snapshot"):
        store.commit(WriteRequest(RECOMMENDATIONS, "overwrite", "slow-writer", partition=part),
                     mine,
                     expected_partition_state=snapshot)
    assert [r[4] for r in delta_rows(store.uri("recommendations"))] == [5.0, 6.0]


def test_overwrite_of_other_partition_is_not_a_conflict(store) -> None:
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "seed"))
    snapshot = store.partition_state(store.delta_table(RECOMMENDATIONS), {"ds": "2024-01-01"})
    mine = _written_files(store, recs("2024-01-01", range(2), score=9.0), "w1")
    store.write_arrow(recs("2024-01-02", range(2)), WriteRequest(RECOMMENDATIONS, "append", "other-day"))
    result = store.commit(WriteRequest(RECOMMENDATIONS, "overwrite", "w1", partition={"ds": "2024-01-01"}),
                          mine,
                          expected_partition_state=snapshot)
    assert result.version == 2


def test_schema_enforced_on_write_naming_columns(spark, store) -> None:
    bad = spark.createDataFrame(recs("2024-01-01", range(2))).withColumnRenamed("score", "scr").drop("source")
    with pytest.raises(SchemaMismatchError, match=r"missing column\(s\) \['score', 'source'\].*unexpected.*scr"):
        store.write(bad, WriteRequest(RECOMMENDATIONS, "append", "bad"))
    retyped = spark.createDataFrame(recs("2024-01-01", range(2))).withColumn("rank", __import__(
        "pyspark.sql.functions", fromlist=["col"]).col("rank").cast("string"))
    with pytest.raises(SchemaMismatchError, match="column 'rank' has type string, expected int"):
        store.write(retyped, WriteRequest(RECOMMENDATIONS, "append", "bad2"))
    assert not DeltaTable.is_deltatable(store.uri("recommendations"))


def test_null_in_not_null_column_fails_the_write_with_its_class(spark, store) -> None:
    from pyspark.sql import functions as F

    df = spark.createDataFrame(recs("2024-01-01", range(3))).withColumn(
        "item_id", F.when(F.col("user_id") == 1, F.lit(None)).otherwise(F.col("item_id")))
    with pytest.raises(NullValueError, match="column 'item_id' is NOT NULL"):
        store.write(df, WriteRequest(RECOMMENDATIONS, "append", "nulls"))
    assert not DeltaTable.is_deltatable(store.uri("recommendations"))


def test_nan_score_is_refused(store) -> None:
    table = recs("2024-01-01", range(2)).set_column(4, "score", pa.array([1.0, math.nan], pa.float32()))
    with pytest.raises(NonFiniteValueError, match="'score' holds 1 NaN"):
        store.write_arrow(table, WriteRequest(RECOMMENDATIONS, "append", "nan"))


def test_unsafe_partition_value_is_refused(store) -> None:
    with pytest.raises(InvalidPartitionValueError, match=r"'\.\./x'"):
        store.write_arrow(recs("../x", range(1)), WriteRequest(RECOMMENDATIONS, "append", "p"))
    with pytest.raises(ConfigError, match=r"partitioned by \['ds'\]"):
        store.write_arrow(recs("2024-01-01", range(1)),
                          WriteRequest(RECOMMENDATIONS, "overwrite", "p2", partition={"day": "2024-01-01"}))


def test_reading_a_missing_table_names_it(store) -> None:
    with pytest.raises(TableNotFoundError, match="table 'user_histories' does not exist"):
        store.read(USER_HISTORIES)


def test_read_refuses_a_table_whose_schema_drifted(spark, store) -> None:
    store.write_arrow(recs("2024-01-01", range(2)), WriteRequest(RECOMMENDATIONS, "append", "r"))
    from pipelines.tables.schemas import TableSpec

    expects_more = TableSpec("recommendations", RECOMMENDATIONS.schema.append(pa.field("extra", pa.int64())),
                             ("ds",))
    with pytest.raises(SchemaMismatchError, match=r"missing column\(s\) \['extra'\]"):
        store.read(expects_more)


def test_engine_selection(spark, lakehouse) -> None:
    assert open_lakehouse(spark, lakehouse).engine == ("delta-spark" if delta_spark_available(spark) else "delta-rs")
    assert open_lakehouse(spark, lakehouse, engine="delta-rs").engine == "delta-rs"
    with pytest.raises(ConfigError, match="table engine must be"):
        open_lakehouse(spark, lakehouse, engine="hive")


def test_delta_spark_engine_roundtrip(spark, lakehouse) -> None:
    if not delta_spark_available(spark):
        pytest.skip("delta-spark classes are not on the classpath (Maven Central is unreachable here); "
                    "the delta-rs engine is the one tested")
    store = open_lakehouse(spark, lakehouse, engine="delta-spark")
    df = spark.createDataFrame(recs("2024-01-01", range(3)))
    assert not store.write(df, WriteRequest(RECOMMENDATIONS, "append", "s1")).skipped
    assert store.write(df, WriteRequest(RECOMMENDATIONS, "append", "s1")).skipped
    assert store.read(RECOMMENDATIONS).count() == 3
    staged = store.stage(spark.createDataFrame(recs("2024-01-02", range(2))),
                         WriteRequest(RECOMMENDATIONS, "overwrite", "s2", partition={"ds": "2024-01-02"}))
    assert staged.frame.count() == 2 and store.read(RECOMMENDATIONS).count() == 3
    assert not store.commit_staged(staged).skipped
    assert sorted(store.read_arrow(RECOMMENDATIONS, ["user_id"]).column("user_id").to_pylist()) == [0, 0, 1, 1, 2]


def test_dense_vector_columns_are_written_uncompressed(store) -> None:
    import pyarrow.parquet as pq

    from pipelines.tables.schemas import USER_LINKS

    rows = [{"ds": "2024-01-01", "model_version": "v1", "user_id": u, "l_p": [0.5 * u] * 8} for u in range(3)]
    store.write_arrow(pa.Table.from_pylist(rows, schema=USER_LINKS.schema), WriteRequest(USER_LINKS, "append", "c"))
    [path] = DeltaTable(store.uri("user_links")).file_uris()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema.split(".")[0]: meta.column(i).compression
              for i in range(meta.num_columns)}
    assert codecs == {"model_version": "ZSTD", "user_id": "ZSTD", "l_p": "UNCOMPRESSED"}
    assert sorted(DeltaTable(store.uri("user_links")).to_pyarrow_table().column("user_id").to_pylist()) == [0, 1, 2]
