"""Token-balanced partitioning: the driver-side hash agrees with Spark's, so keys land exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.partitioning import partition_keys, spark_hash_long

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
