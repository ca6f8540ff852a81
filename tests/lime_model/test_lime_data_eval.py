"""Leave-one-out split, prefix batches, ranks and metrics on tiny inline data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lime_model.data import (
    build_sequences,
    leave_one_out,
    plan_sequences,
    prefix_batch,
    prefix_batches,
    right_align,
    sequence_batch,
    sequence_windows,
)
from lime_model.errors import InsufficientDataError
from lime_model.evaluate import metrics_from_ranks, rank_targets, target_ranks
from lime_model.vocab import ItemVocabulary

FRAME = pd.DataFrame({
    "user_id":   [1, 1, 1, 1, 2, 2, 2, 3, 3],
    "item_id":   [10, 20, 30, 40, 30, 10, 50, 20, 10],
    "timestamp": [5, 1, 2, 2, 7, 8, 9, 1, 2],
})


def _split():
    vocab = ItemVocabulary.from_raw(FRAME["item_id"].to_numpy(np.int64))
    return vocab, leave_one_out(build_sequences(FRAME, vocab))


def test_vocabulary_maps_sorted_raw_ids_to_1_based_indices() -> None:
    vocab, _ = _split()
    assert vocab.item_ids.tolist() == [10, 20, 30, 40, 50]
    assert len(vocab) == 5 and vocab.num_indices == 6
    assert vocab.encode(np.array([50, 10, 11, -3], dtype=np.int64)).tolist() == [5, 1, 0, 0]
    assert vocab.decode(np.array([1, 5, 0])).tolist() == [10, 50, -1]


def test_sequences_are_time_ordered_with_stable_ties() -> None:
    _, split = _split()
    seq = split.sequences
    assert seq.user_ids.tolist() == [1, 2, 3]
    # user 1: (20, t1), (30, t2), (40, t2), (10, t5): the t2 tie keeps file order 30 before 40
    assert [s.tolist() for s in seq.items] == [[2, 3, 4, 1], [3, 1, 5], [2, 1]]


def test_leave_one_out_holds_out_last_two_and_skips_short_users() -> None:
    _, split = _split()
    assert split.eval_users.tolist() == [0, 1]  # user 3 has only 2 interactions
    assert [s.tolist() for s in split.train_items] == [[2, 3], [3], [2, 1]]
    hist, times, targets = split.stage("valid")
    assert [h.tolist() for h in hist] == [[2, 3], [3]]
    assert targets.tolist() == [4, 1]
    hist, times, targets = split.stage("test")
    assert [h.tolist() for h in hist] == [[2, 3, 4], [3, 1]]
    assert [t.tolist() for t in times] == [[1.0, 2.0, 2.0], [7.0, 8.0]]
    assert targets.tolist() == [1, 5]
    assert split.popularity(6).tolist() == [1, 2, 2, 0, 0]  # training part only


def test_leave_one_out_without_evaluable_users_is_an_error() -> None:
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1, 2]})
    vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy(np.int64))
    with pytest.raises(InsufficientDataError, match="no user has >= 3 interactions to evaluate"):
        leave_one_out(build_sequences(frame, vocab))


def test_prefix_batches_yield_each_training_target_once_per_epoch() -> None:
    _, split = _split()
    batches = list(prefix_batches(split, prefixes_per_user=10, batch_size=2, max_history=1,
                                  rng=np.random.default_rng(0)))
    examples = sorted((b.history[i].tolist(), int(b.targets[i, 0]))
                      for b in batches for i in range(len(b.targets)))
    # user 1 train [2, 3] -> ([2], 3); user 2 train [3] -> none; user 3 train [2, 1] -> ([2], 1)
    assert examples == [([2], 1), ([2], 3)]


def test_prefix_targets_are_the_next_training_items_of_the_window() -> None:
    _, split = _split()  # user 1 trains on [2, 3]
    batch = prefix_batch(split, np.array([[0, 1]]), max_history=5, target_window=3)
    assert batch.history.tolist() == [[2]]
    assert batch.targets.tolist() == [[3, 0, 0]]  # only training items, never validation or test


def test_sequence_windows_make_every_training_item_but_the_first_a_target_once() -> None:
    split = _long_split(length=12)  # one user, 10 training items
    windows = sequence_windows(split, max_history=4)
    targets = sorted(t for u, a, b in windows for t in split.train_items[u][a + 1:b].tolist())
    assert targets == sorted(split.train_items[0][1:].tolist())
    assert all(b - a <= 5 for _, a, b in windows)


def test_sequence_batch_targets_each_position_with_the_next_item() -> None:
    split = _long_split(length=6)  # training items are vocabulary indices of 1..4
    (rows,) = plan_sequences(split, batch_size=4, max_history=10, rng=np.random.default_rng(0))
    batch = sequence_batch(split, rows)
    items = split.train_items[0]
    assert batch.left_aligned
    assert batch.history.tolist() == [items[:-1].tolist()]
    assert batch.targets[:, 0].tolist() == items[1:].tolist()


def _long_split(length: int):
    frame = pd.DataFrame({"user_id": [1] * length, "item_id": list(range(1, length + 1)),
                          "timestamp": list(range(length))})
    vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy(np.int64))
    return leave_one_out(build_sequences(frame, vocab))


def test_right_align_pads_on_the_left() -> None:
    out = right_align([np.array([1, 2, 3]), np.array([7])], 0)
    assert out.tolist() == [[1, 2, 3], [0, 0, 7]]


def test_target_rank_counts_better_items_and_ties_with_smaller_ids_only() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])  # indices 1..5
    seen = torch.tensor([[False, True, False, False, False]])  # index 2 (0.9) is history
    # target index 3 (0.5): index 2 masked; tie with index 1 (smaller id) counts; index 5 does not
    assert target_ranks(scores, torch.tensor([3]), seen).tolist() == [1]
    assert target_ranks(scores, torch.tensor([1]), seen).tolist() == [0]


def test_metrics_from_ranks() -> None:
    metrics = metrics_from_ranks(np.array([0, 3, 10, 49, 50]))
    assert metrics["hr@10"] == pytest.approx(2 / 5)
    assert metrics["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 5)
    assert metrics["hr@50"] == pytest.approx(4 / 5)
    assert metrics["ndcg@50"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(12)
                                                + 1 / math.log2(51)) / 5)


class _FixedScores(torch.nn.Module):
    """Scores item i by i (a 'model' whose ranking is known)."""

    def __init__(self) -> None:
        super().__init__()
        from lime_model.config import ModelConfig
        self.cfg = ModelConfig(model="popularity", num_items=6, max_history=8)

    def table_scores(self, history, timestamps, cand_idx):
        return cand_idx.float().expand(history.shape[0], -1)


def test_rank_targets_masks_the_history_of_each_user() -> None:
    histories = [np.array([5, 4], dtype=np.int64), np.array([1], dtype=np.int64)]
    times = [np.array([1.0, 2.0]), np.array([1.0])]
    ranks = rank_targets(_FixedScores(), histories, times, np.array([3, 3], dtype=np.int64))
    # user 0: 5 and 4 are history -> 3 ranks first; user 1: 5 and 4 outrank 3
    assert ranks.tolist() == [0, 2]
