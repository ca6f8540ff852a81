"""Token-balanced partitioning of users for inference.

Encoder cost grows with history length, so partitions must carry similar
**token counts** (sum of history lengths), not just similar user counts.  Users
are ordered by length (longest first, then user id) and dealt to partitions in
snake order (0..P-1, P-1..0, ...), which keeps every partition within one
history length of the others.  The global position of a user is its rank in its
length class plus the number of users in longer classes, so no single-partition
global sort is needed: one small ``groupBy(n)`` on the driver and a window per
length class.

Spark's ``repartition(P, col)`` places a row in ``pmod(murmur3(col), P)``;
:func:`partition_keys` finds, for each target partition ``j``, a key that hashes
to ``j``, so the assignment is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def snake_partition(position: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each global position (0-based, longest history first)."""
    rnd, offset = np.divmod(position, partitions)
    return np.where(rnd % 2 == 0, offset, partitions - 1 - offset)


def class_offsets(length_counts: Mapping[int, int]) -> dict[int, int]:
    """Global position of the first user of each length class (longest class first)."""
    offsets: dict[int, int] = {}
    running = 0
    for length in sorted(length_counts, reverse=True):
        offsets[length] = running
        running += int(length_counts[length])
    return offsets


def partition_keys(spark: SparkSession, partitions: int) -> list[int]:
    """``keys[j]`` is a bigint whose Spark hash partition among ``partitions`` is ``j``."""
    from pyspark.sql import functions as F

    found: dict[int, int] = {}
    span = 64 * partitions
    start = 0
    while len(found) < partitions:
        rows = (
            spark.range(start, start + span)
            .select("id", F.pmod(F.hash("id"), F.lit(partitions)).alias("p"))
            .groupBy("p").agg(F.min("id").alias("id"))
            .collect()
        )
        for row in rows:
            found.setdefault(int(row.p), int(row.id))
        start += span
    return [found[j] for j in range(partitions)]


def token_balanced(histories: DataFrame, partitions: int, length_col: str = "n") -> DataFrame:
    """``histories`` repartitioned into ``partitions`` token-balanced partitions,
    sorted by history length within each partition (for padding-light batches)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = histories.sparkSession
    counts = {int(r[length_col]): int(r["count"]) for r in histories.groupBy(length_col).count().collect()}
    if not counts:
        return histories.repartition(partitions)
    offsets = class_offsets(counts)
    keys = partition_keys(spark, partitions)
    offset_expr = F.element_at(
        F.create_map(*[x for n, o in offsets.items() for x in (F.lit(n), F.lit(o))]), F.col(length_col)
    )
    rank = F.row_number().over(Window.partitionBy(length_col).orderBy("user_id")) - 1
    position = offset_expr + rank
    rnd = F.floor(position / partitions)
    offset = F.pmod(position, F.lit(partitions))
    target = F.when(rnd % 2 == 0, offset).otherwise(partitions - 1 - offset)
    key = F.element_at(F.array(*[F.lit(k).cast("bigint") for k in keys]), (target + 1).cast("int"))
    return (
        histories.withColumn("_partition_key", key)
        .repartition(partitions, "_partition_key")
        .drop("_partition_key")
        .sortWithinPartitions(length_col, "user_id")
    )
