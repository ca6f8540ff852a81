"""Token-balanced partitioning of users for inference.

Encoder cost grows with history length, so partitions must carry similar
**token counts** (sum of history lengths), not just similar user counts.  Users
are ordered by length (longest first, then user id) and dealt to partitions in
snake order (0..P-1, P-1..0, ...), which keeps every partition within one
history length of the others.  The global position of a user is its rank in its
length class plus the number of users in longer classes, so no single-partition
global sort is needed: one small ``groupBy(n)`` (one row per distinct length, joined
back as a broadcast) and a window per length class.

Spark's ``repartition(P, col)`` places a row in ``pmod(murmur3(col), P)``;
:func:`partition_keys` finds, for each target partition ``j``, a key that hashes
to ``j`` (Spark's Murmur3 computed on the driver, :func:`spark_hash_long`), so the assignment
is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def snake_partition(position: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each global position (0-based, longest history first)."""
    rnd, offset = np.divmod(position, partitions)
    return np.where(rnd % 2 == 0, offset, partitions - 1 - offset)


_M32 = np.uint64(0xFFFFFFFF)


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M32


def _mix(h1: np.ndarray, k1: np.ndarray) -> np.ndarray:
    k1 = (k1 * np.uint64(0xCC9E2D51)) & _M32
    k1 = (_rotl32(k1, 15) * np.uint64(0x1B873593)) & _M32
    h1 = _rotl32(h1 ^ k1, 13)
    return (h1 * np.uint64(5) + np.uint64(0xE6546B64)) & _M32


def spark_hash_long(values: np.ndarray, seed: int = 42) -> np.ndarray:
    """Spark's ``hash(col)`` of bigint values (Murmur3_x86_32.hashLong with its seed 42), as int32."""
    v = values.astype(np.int64).view(np.uint64)
    h1 = _mix(np.full(v.shape, seed, np.uint64), v & _M32)  # low word, then high word
    h1 = _mix(h1, v >> np.uint64(32))
    h1 ^= np.uint64(8)  # fmix(h1, length=8)
    h1 ^= h1 >> np.uint64(16)
    h1 = (h1 * np.uint64(0x85EBCA6B)) & _M32
    h1 ^= h1 >> np.uint64(13)
    h1 = (h1 * np.uint64(0xC2B2AE35)) & _M32
    h1 ^= h1 >> np.uint64(16)
    return h1.astype(np.uint32).view(np.int32)


def partition_keys(partitions: int) -> list[int]:
    """``keys[j]`` is a bigint whose Spark hash partition among ``partitions`` is ``j``
    (``pmod(hash(key), partitions) == j``), found on the driver without a Spark job."""
    found: dict[int, int] = {}
    span = 64 * partitions
    start = 0
    while len(found) < partitions:
        ids = np.arange(start, start + span, dtype=np.int64)
        for key, part in zip(ids.tolist(), np.mod(spark_hash_long(ids), partitions).tolist(), strict=True):
            found.setdefault(part, key)
        start += span
    return [found[j] for j in range(partitions)]


def _class_offsets_frame(histories: DataFrame, length_col: str) -> DataFrame:
    """(length, ``_offset``) per length class: the users in longer classes, computed by Spark.

    Kept a DataFrame (one row per distinct length) rather than a literal map in the plan: the
    DAG allows histories up to 100,000 long, and a literal per length would bloat every task."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    longer = Window.orderBy(F.desc(length_col)).rowsBetween(Window.unboundedPreceding, -1)
    counts = histories.groupBy(length_col).count()
    return counts.select(length_col, F.coalesce(F.sum("count").over(longer), F.lit(0)).alias("_offset"))


def token_balanced(histories: DataFrame, partitions: int, length_col: str = "n") -> DataFrame:
    """``histories`` repartitioned into ``partitions`` token-balanced partitions,
    sorted by history length within each partition (for padding-light batches)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = partition_keys(partitions)
    offsets = F.broadcast(_class_offsets_frame(histories, length_col))
    rank = F.row_number().over(Window.partitionBy(length_col).orderBy("user_id")) - 1
    position = F.col("_offset") + rank
    rnd = F.floor(position / partitions)
    offset = F.pmod(position, F.lit(partitions))
    target = F.when(rnd % 2 == 0, offset).otherwise(partitions - 1 - offset)
    key = F.element_at(F.array(*[F.lit(k).cast("bigint") for k in keys]), (target + 1).cast("int"))
    return (
        histories.join(offsets, length_col)
        .withColumn("_partition_key", key)
        .repartition(partitions, "_partition_key")
        .drop("_partition_key", "_offset")
        .select(*histories.columns)
        .sortWithinPartitions(length_col, "user_id")
    )
