"""Token-balanced partitioning: the driver-side hash agrees with Spark's, so keys land exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.runtime.partitioning import partition_keys, spark_hash_long

pytestmark = pytest.mark.spark


def test_spark_hash_long_equals_sparks_hash_and_keys_land_in_their_partition(spark) -> None:
    from pyspark.sql import functions as F

    rng = np.random.default_rng(7)
    ids = np.concatenate([np.arange(-5, 300), rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max,
                                                            200, dtype=np.int64),
                          [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 2**32, 2**32 - 1, -(2**31)]])
    df = spark.createDataFrame(pa.table({"id": pa.array(ids, pa.int64())}))
    theirs = {int(r.id): int(r.h) for r in df.select("id", F.hash("id").alias("h")).collect()}
    ours = dict(zip(ids.tolist(), spark_hash_long(ids).tolist(), strict=True))
    assert ours == theirs
    for partitions in (1, 2, 7, 64):
        keys = partition_keys(partitions)
        placed = spark.createDataFrame(pa.table({"k": pa.array(keys, pa.int64())})).select(
            F.pmod(F.hash("k"), F.lit(partitions)).alias("p")).collect()
        assert [int(r.p) for r in placed] == list(range(partitions))


def _plan_chars(df) -> int:
    """Characters of the logical plan printed in full (Spark abbreviates long lists by default)."""
    conf = df.sparkSession.conf
    before = conf.get("spark.sql.debug.maxToStringFields")
    conf.set("spark.sql.debug.maxToStringFields", "1000000")
    try:
        return len(df._jdf.queryExecution().logical().toString())
    finally:
        conf.set("spark.sql.debug.maxToStringFields", before)


def test_token_balanced_plan_size_is_independent_of_distinct_history_lengths(spark) -> None:
    """The plan must not carry one literal per distinct history length (the DAG allows lengths up to
    100,000): 3,000 distinct lengths give the same plan size as 3."""
    from pyspark.sql import functions as F

    from pipelines.runtime.partitioning import token_balanced

    def histories(distinct_lengths: int):
        return spark.range(3000).select(F.col("id").alias("user_id"),
                                        (F.col("id") % distinct_lengths + 1).cast("int").alias("n"))

    few, many = token_balanced(histories(3), 4), token_balanced(histories(3000), 4)
    assert abs(_plan_chars(many) - _plan_chars(few)) < 200


def test_token_balanced_partitions_carry_tokens_within_one_longest_history(spark) -> None:
    from pyspark.sql import functions as F

    from pipelines.runtime.partitioning import token_balanced

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 400, 2000)
    df = spark.createDataFrame(pa.table({"user_id": pa.array(np.arange(2000), pa.int64()),
                                         "n": pa.array(lengths, pa.int32())}))
    out = token_balanced(df, 5).select("user_id", "n", F.spark_partition_id().alias("p")).toPandas()
    assert sorted(out.user_id) == list(range(2000))
    tokens = out.groupby("p").n.sum()
    assert len(tokens) == 5 and tokens.max() - tokens.min() <= lengths.max()
    assert out.groupby("p").size().max() - out.groupby("p").size().min() <= 1
