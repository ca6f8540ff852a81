"""Pure pieces of the scorer and the partitioner."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lime_model.scoring import score_from_tables
from pipelines.errors import EmptyCatalogueError, NonFiniteValueError
from pipelines.runtime.candidate_matrix import CandidateMatrix, candidate_matrix
from pipelines.runtime.partitioning import snake_partition
from pipelines.runtime.scoring_task import (
    LinkFiles,
    popular_items,
    popular_items_arrow,
    popular_items_from_files,
    seen_positions,
    shard_bounds,
    topk_against,
    topk_rows,
)


def test_seen_positions_maps_only_candidates() -> None:
    seen = pa.array([[5, 7, 100], [], None, [9]], pa.list_(pa.int64()))
    rows, pos = seen_positions(seen, np.array([5, 6, 7, 9]))
    assert rows.tolist() == [0, 0, 3] and pos.tolist() == [0, 2, 3]


def test_shard_bounds_cover_all_ids_once() -> None:
    ids = np.array([3, 4, 8, 10, 11, 20, 21])
    bounds = shard_bounds(ids, 3)
    assert bounds[0][0] == 3 and bounds[-1][1] == 22
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    counts = [int(((ids >= lo) & (ids < hi)).sum()) for lo, hi in bounds]
    assert sum(counts) == len(ids) and max(counts) <= 3


def test_topk_rows_drop_padding() -> None:
    batch = topk_rows(np.array([1, 2]), np.array([[5, 6], [7, -1]]), np.array([[2.0, 1.0], [3.0, -np.inf]]))
    assert batch.to_pydict() == {"user_id": [1, 1, 2], "rank": [1, 2, 1], "item_id": [5, 6, 7],
                                 "score": [2.0, 1.0, 3.0]}


def test_block_topk_equals_brute_force_with_exclusions() -> None:
    rng = np.random.default_rng(0)
    heads, links, d, c = 2, 3, 8, 37
    cands = CandidateMatrix(np.arange(100, 100 + c, dtype=np.int64),
                            rng.random((c, heads * links)).astype(np.float32),
                            rng.standard_normal((c, d)).astype(np.float32),
                            rng.standard_normal(c).astype(np.float32))
    values = torch.from_numpy(rng.standard_normal((4, links, d)).astype(np.float32))
    excluded = (np.array([0, 0, 2]), np.array([3, 30, 0]))
    ids, scores = topk_against(values, cands, heads, links, 5, excluded, block=8)
    full = score_from_tables(values, torch.from_numpy(cands.link_weights), torch.from_numpy(cands.cand_vec),
                             torch.from_numpy(cands.bias), heads).numpy()
    full[excluded] = -np.inf
    for row in range(4):
        order = np.lexsort((cands.item_ids, -full[row]))[:5]
        assert ids[row].tolist() == cands.item_ids[order].tolist()
        np.testing.assert_allclose(scores[row].numpy(), full[row, order], rtol=1e-5)


def _table(ids, weights, vec, bias) -> pa.Table:
    return pa.table({"item_id": pa.array(ids, pa.int64()),
                     "link_weights": pa.array(weights, pa.list_(pa.float32())),
                     "cand_vec": pa.array(vec, pa.list_(pa.float32())), "bias": pa.array(bias, pa.float32())})


def test_candidate_matrix_refuses_bad_rows() -> None:
    good = _table([2, 1], [[0.5, 0.5], [1.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]], [0.1, 0.2])
    m = candidate_matrix(good, 1, 2, 2)
    assert m.item_ids.tolist() == [1, 2] and m.bias.tolist() == pytest.approx([0.2, 0.1])
    with pytest.raises(NonFiniteValueError, match="'bias' holds NaN/inf for item_id 1"):
        candidate_matrix(_table([1], [[1.0, 0.0]], [[1.0, 1.0]], [float("nan")]), 1, 2, 2)
    with pytest.raises(NonFiniteValueError, match="'cand_vec' must hold 2 values per row"):
        candidate_matrix(_table([1], [[1.0, 0.0]], [[1.0]], [0.0]), 1, 2, 2)
    with pytest.raises(NonFiniteValueError, match="item_id 1 appears more than once"):
        candidate_matrix(_table([1, 1], [[1.0, 0.0]] * 2, [[1.0, 1.0]] * 2, [0.0, 0.0]), 1, 2, 2)
    with pytest.raises(EmptyCatalogueError):
        candidate_matrix(_table([], [], [], []), 1, 2, 2)


def test_snake_partition_balances_sorted_lengths() -> None:
    lengths = np.sort(np.random.default_rng(1).integers(1, 200, size=10_000))[::-1]
    parts = snake_partition(np.arange(len(lengths)), 7)
    tokens = np.bincount(parts, weights=lengths, minlength=7)
    assert tokens.max() - tokens.min() <= lengths.max()


def test_link_files_stream_each_file_with_its_users_seen_lists(tmp_path) -> None:
    import pyarrow.parquet as pq

    paths = []
    for f, users in enumerate(([3, 1, 7], [5])):
        table = pa.table({"model_version": ["v"] * len(users), "user_id": pa.array(users, pa.int64()),
                          "l_p": pa.array([[float(u)] * 4 for u in users], pa.list_(pa.float32()))})
        paths.append((tmp_path / f"part-{f}.parquet").as_uri())
        pq.write_table(table, tmp_path / f"part-{f}.parquet")
    seen = pa.table({"user_id": pa.array([7, 3, 5], pa.int64()),
                     "seen": pa.array([[70], [30, 31], []], pa.list_(pa.int64()))})

    class Broadcast:
        value = seen

    tasks = [pa.RecordBatch.from_pydict({"path": paths})]
    out = pa.Table.from_batches(list(LinkFiles(Broadcast(), batch_rows=2)(iter(tasks))))
    assert out.column_names == ["user_id", "l_p", "seen"]
    assert out.column("user_id").to_pylist() == [3, 1, 7, 5]
    assert out.column("seen").to_pylist() == [[30, 31], None, [70], []]  # user 1 has no history row
    assert out.column("l_p").to_pylist()[2] == [7.0] * 4
    plain = pa.Table.from_batches(list(LinkFiles(None)(iter(tasks))))
    assert plain.column_names == ["user_id", "l_p"] and plain.num_rows == 4


def test_link_files_leave_out_the_skipped_users_and_their_row_groups(tmp_path) -> None:
    """Incremental scoring: the users whose lists are copied are not read; a row group of only
    such users is not decoded beyond user_id."""
    import pyarrow.parquet as pq

    users = list(range(10))
    table = pa.table({"user_id": pa.array(users, pa.int64()),
                      "l_p": pa.array([[float(u)] * 2 for u in users], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "links.parquet", row_group_size=4)  # groups 0-3, 4-7, 8-9

    class Skip:
        value = np.array([0, 1, 2, 3, 5, 9], np.int64)

    tasks = [pa.RecordBatch.from_pydict({"path": [(tmp_path / "links.parquet").as_uri()]})]
    batches = list(LinkFiles(None, batch_rows=2, skip=Skip())(iter(tasks)))
    out = pa.Table.from_batches(batches)
    assert out.column("user_id").to_pylist() == [4, 6, 7, 8]
    assert out.column("l_p").to_pylist() == [[4.0] * 2, [6.0] * 2, [7.0] * 2, [8.0] * 2]
    assert [b.num_rows for b in batches] == [2, 1, 1]  # batch_rows holds; nothing from the first group


@pytest.mark.spark
def test_popularity_list_from_arrow_equals_the_spark_count(spark, tmp_path: Path) -> None:
    # ties on count (1 and 4 both twice) break by item id; 99 is not a candidate; 8 never seen fills in
    lists = pa.array([[4, 1, 99], [1, 3], [4, 99, 99], [], None], pa.list_(pa.int64()))
    histories = spark.createDataFrame(pa.table({"item_ids": lists}))
    candidates = np.array([1, 3, 4, 8], np.int64)
    files = []
    for name, rows in (("a", slice(0, 2)), ("b", slice(2, 5))):  # the tie split over two files
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"item_ids": lists[rows]}), path, row_group_size=1)
        files.append(path.as_uri())
    for k in (1, 2, 4):
        want = popular_items(histories, candidates, k)
        assert popular_items_arrow(lists, candidates, k) == want
        assert popular_items_from_files(files, candidates, k) == want
    assert want == [(1, 1, 2.0), (2, 4, 2.0), (3, 3, 1.0), (4, 8, 0.0)]
    assert popular_items_from_files([], candidates, 2) == [(1, 1, 0.0), (2, 3, 0.0)]
