"""Exact top-K: (score desc, item id asc), exclusions, padding, shard merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lime_model.topk import exact_topk, merge_topk

NEG_INF = float("-inf")


def brute_force(scores: torch.Tensor, ids: torch.Tensor, k: int, exclude: torch.Tensor | None
                ) -> tuple[list[list[int]], list[list[float]]]:
    out_ids, out_scores = [], []
    for row in range(scores.shape[0]):
        entries = [(float(scores[row, j]), int(ids[j])) for j in range(scores.shape[1])
                   if (exclude is None or not exclude[row, j]) and float(scores[row, j]) != NEG_INF]
        entries.sort(key=lambda e: (-e[0], e[1]))
        entries = entries[:k] + [(NEG_INF, -1)] * max(0, k - len(entries))
        out_ids.append([e[1] for e in entries])
        out_scores.append([e[0] for e in entries])
    return out_ids, out_scores


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_exact_topk_matches_brute_force_with_many_ties(data: st.DataObject) -> None:
    b = data.draw(st.integers(1, 4))
    c = data.draw(st.integers(1, 30))
    k = data.draw(st.integers(1, 35))
    values = st.sampled_from([0.0, 1.0, 1.5, -2.0, NEG_INF])  # few distinct values: ties everywhere
    rows = st.lists(st.lists(values, min_size=c, max_size=c), min_size=b, max_size=b)
    scores = torch.tensor(data.draw(rows))
    ids = torch.tensor(data.draw(st.lists(st.integers(0, 10**6), min_size=c, max_size=c, unique=True)))
    exclude = None
    if data.draw(st.booleans()):
        exclude = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=c, max_size=c),
                                                  min_size=b, max_size=b)))
    got_ids, got_scores = exact_topk(scores, ids, k, exclude)
    want_ids, want_scores = brute_force(scores, ids, k, exclude)
    assert got_ids.tolist() == want_ids
    assert got_scores.tolist() == want_scores


def test_exact_topk_breaks_ties_by_item_id_ascending() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 2.0]])
    ids = torch.tensor([50, 40, 30, 20, 10])
    got_ids, got_scores = exact_topk(scores, ids, 2)
    assert got_ids.tolist() == [[20, 30]]
    assert got_scores.tolist() == [[3.0, 3.0]]


def test_exact_topk_never_returns_excluded_items_and_pads() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0], [1.0, 2.0, 3.0]])
    ids = torch.tensor([7, 8, 9])
    exclude = torch.tensor([[True, False, True], [False, False, False]])
    got_ids, got_scores = exact_topk(scores, ids, 4, exclude)
    assert got_ids.tolist() == [[8, -1, -1, -1], [9, 8, 7, -1]]
    assert got_scores.tolist() == [[4.0, NEG_INF, NEG_INF, NEG_INF], [3.0, 2.0, 1.0, NEG_INF]]


def test_exact_topk_rejects_nan_scores() -> None:
    with pytest.raises(ValueError, match="scores hold NaN"):
        exact_topk(torch.tensor([[1.0, float("nan")]]), torch.tensor([1, 2]), 1)


@pytest.mark.parametrize("where", [0, 4_999, 9_999])
def test_exact_topk_finds_one_nan_anywhere_in_a_large_block(where: int) -> None:
    scores = torch.randn(3, 10_000)
    scores[1, where] = float("nan")
    with pytest.raises(ValueError, match="scores hold NaN"):
        exact_topk(scores, torch.arange(10_000, dtype=torch.int64), 10)
    excluded = torch.zeros(3, 10_000, dtype=torch.bool)
    excluded[:, :9_000] = True  # NaN under an excluded entry is masked away, not an error
    if where < 9_000:
        exact_topk(scores, torch.arange(10_000, dtype=torch.int64), 10, exclude=excluded)


def test_exact_topk_on_a_large_catalogue_equals_a_full_sort() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 50, (8, 100_000), generator=g).float()  # heavy ties at the boundary
    ids = torch.randperm(100_000, generator=g)
    got_ids, got_scores = exact_topk(scores, ids, 100)
    for row in range(8):
        order = np.lexsort((ids.numpy(), -scores[row].numpy()))[:100]  # last key is primary
        assert got_ids[row].tolist() == ids[order].tolist()
        assert got_scores[row].tolist() == scores[row, order].tolist()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_merging_shard_topk_lists_equals_topk_of_the_whole(data: st.DataObject) -> None:
    c = data.draw(st.integers(2, 24))
    k = data.draw(st.integers(1, 12))
    cut = data.draw(st.integers(1, c - 1))
    scores = torch.tensor([data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, NEG_INF]), min_size=c,
                                              max_size=c))])
    ids = torch.tensor(data.draw(st.lists(st.integers(0, 1000), min_size=c, max_size=c, unique=True)))
    a = exact_topk(scores[:, :cut], ids[:cut], k)
    b = exact_topk(scores[:, cut:], ids[cut:], k)
    merged_ids, merged_scores = merge_topk(*a, *b, k)
    whole_ids, whole_scores = exact_topk(scores, ids, k)
    assert merged_ids.tolist() == whole_ids.tolist()
    assert merged_scores.tolist() == whole_scores.tolist()
