"""The quality gate's per-user checks, on both of its rank checks (bitmap for K <= 62, pair count above)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.stages.quality_gate import check_recommendations
from pipelines.tables.schemas import RECOMMENDATIONS

pytestmark = pytest.mark.spark

DS = "2024-01-01"
MV = "mv1"
LISTS = {
    1: [(1, 10, "model"), (2, 11, "model"), (3, 12, "model")],  # good
    2: [(1, 10, "model"), (1, 11, "model"), (3, 12, "model")],  # rank 1 twice, 2 missing
    3: [(1, 10, "model"), (2, 11, "model"), (4, 12, "model")],  # ranks 1, 2, 4
    4: [(1, 10, "model"), (2, 10, "model"), (3, 12, "model")],  # item 10 twice
    5: [(1, 10, "popular"), (2, 11, "popular"), (3, 12, "popular")],  # history, but popular rows
    6: [(1, 12, "popular"), (2, 11, "popular"), (3, 10, "popular")],  # cold user: popular is right
}


@pytest.mark.parametrize("top_k", [3, 70])
def test_each_broken_list_is_counted_by_its_own_check(spark, top_k: int) -> None:
    rows = [(DS, user, rank, item, 1.0 / rank, MV, source)
            for user, lst in LISTS.items() for rank, item, source in lst]
    recs = spark.createDataFrame(pa.Table.from_pylist(
        [dict(zip(RECOMMENDATIONS.column_names, r, strict=True)) for r in rows], schema=RECOMMENDATIONS.schema))
    histories = spark.createDataFrame(pa.table({
        "user_id": pa.array(list(LISTS), pa.int64()),
        "item_ids": pa.array([[99]] * 5 + [[]], pa.list_(pa.int64())),
        "n": pa.array([1] * 5 + [0], pa.int32()),
        "seen_item_ids": pa.array([[99]] * 5 + [[]], pa.list_(pa.int64())),
        "n_seen": pa.array([1] * 5 + [0], pa.int32()),
    }))
    candidates = spark.createDataFrame(pa.table({"item_id": pa.array([10, 11, 12], pa.int64())}))
    report = check_recommendations(recs, histories, candidates, ds=DS, top_k=top_k, model_version=MV,
                                   exclude_seen=True)
    stats = report.stats
    assert (stats["bad_ranks"], stats["repeated_items"], stats["users_with_wrong_source"]) == (2, 1, 1)
    assert (stats["users"], stats["rows"], stats["users_with_wrong_row_count"]) == (6, 18, 0)
    assert {c.name for c in report.failures} == {"ranks", "distinct_items", "sources"}
