"""Sharded candidate scoring reads each user's scoring input once, whatever the shard count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lime_model.checkpoint import load_checkpoint
from pipelines.runtime import scoring_task as s
from pipelines.runtime.candidate_matrix import candidate_rows
from pipelines.tables.schemas import CANDIDATE_LINK_WEIGHTS
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

ITEMS = np.arange(500, 560, dtype=np.int64)
USERS = 40
K = 5


def _users(spark, width: int, reads):
    """(user_id, l_p, seen) rows; every row a task pulls from this input adds 1 to ``reads``."""
    rng = np.random.default_rng(0)
    table = pa.table({
        "user_id": pa.array(np.arange(USERS), pa.int64()),
        "l_p": pa.array(list(rng.standard_normal((USERS, width)).astype(np.float32)), pa.list_(pa.float32())),
        "seen": pa.array([[int(ITEMS[u % 60]), int(ITEMS[(3 * u) % 60])] for u in range(USERS)],
                         pa.list_(pa.int64())),
    })

    def counted(batches):
        for batch in batches:
            reads.add(batch.num_rows)
            yield batch

    return spark.createDataFrame(table).repartition(2).mapInArrow(counted, spark.createDataFrame(table).schema)


def _lists(df) -> dict[int, list[int]]:
    rows = sorted(df.collect(), key=lambda r: (r.user_id, r.rank))
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r.user_id, []).append(r.item_id)
    return out


def test_sharded_scoring_reads_each_users_input_once(spark, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    version = make_checkpoint(ckpt, ITEMS)
    mc = load_checkpoint(ckpt).config
    ids = spark.createDataFrame(pa.table({"item_id": pa.array(ITEMS, pa.int64())}))
    rows = candidate_rows(ids, str(ckpt), version, "cpu").toArrow().select(CANDIDATE_LINK_WEIGHTS.data_schema.names)
    pq.write_table(rows, tmp_path / "candidates.parquet")
    files = [str(tmp_path / "candidates.parquet")]
    cfg = s.ScoringConfig(str(ckpt), version, top_k=K, candidate_block=16, user_block=8)

    reads = spark.sparkContext.accumulator(0)
    sharded = _lists(s.model_topk(_users(spark, mc.n_links * mc.d_model, reads), cfg, mode="sharded",
                                  candidate_ids=ITEMS, files=files, shards=4))
    assert reads.value == USERS  # not once per shard

    from pipelines.runtime.candidate_matrix import candidate_matrix

    matrix = candidate_matrix(rows, mc.n_heads, mc.n_links, mc.d_model)
    whole = spark.sparkContext.broadcast(matrix)
    try:
        broadcast = _lists(s.model_topk(_users(spark, mc.n_links * mc.d_model, spark.sparkContext.accumulator(0)),
                                        cfg, mode="broadcast", candidate_ids=ITEMS, broadcast=whole))
    finally:
        whole.destroy()
    assert sharded == broadcast and len(sharded) == USERS and all(len(v) == K for v in sharded.values())
