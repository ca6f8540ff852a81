"""Training learns an obvious sequential pattern that popularity cannot see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lime_model.data import build_sequences, leave_one_out
from lime_model.train import (
    Candidates,
    TrainConfig,
    default_configs,
    in_batch_candidates,
    lr_factor,
    multi_target_loss,
    train_model,
)
from lime_model.vocab import ItemVocabulary


def cyclic_interactions(users: int = 120, length: int = 12, cycle: int = 60, seed: int = 0) -> pd.DataFrame:
    """Every user walks the cycle 1 -> 2 -> ... -> cycle -> 1 from a random start: the next item
    is always the last item + 1, while all items are equally popular."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start = int(rng.integers(cycle))
        rows += [(user, (start + t) % cycle + 1, 1000 + 60 * t) for t in range(length)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.mark.parametrize("kind", ["lime-xor", "sasrec"])
def test_training_learns_next_item_pattern_far_above_popularity(kind: str) -> None:
    frame = cyclic_interactions()
    vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy(np.int64))
    split = leave_one_out(build_sequences(frame, vocab))
    small = {"d_model": 32, "n_links": 8, "n_layers": 2, "max_history": 16, "dropout": 0.0}
    model_cfg, _ = default_configs(kind, vocab.num_indices, **small)
    batch_size = 8 if kind == "sasrec" else 128  # whole sequences per sasrec batch, prefixes otherwise
    train_cfg = TrainConfig(epochs=8, batch_size=batch_size, lr=5e-3, warmup_steps=5, prefixes_per_user=10,
                            num_negatives=32, patience=8, seed=0, log_every=1000)
    result = train_model(split, model_cfg, train_cfg)
    pop_cfg, pop_train = default_configs("popularity", vocab.num_indices)
    popularity = train_model(split, pop_cfg, pop_train)
    assert popularity.valid_metrics["hr@10"] < 0.35
    assert result.valid_metrics["hr@10"] > 0.9
    assert result.best_epoch >= 1 and result.steps > 0


def test_multi_target_loss_masks_the_rows_other_targets_and_accidental_hits() -> None:
    candidates = Candidates(torch.tensor([3, 5, 7, 5]), torch.zeros(4), n_distinct=3)  # 5 drawn again
    scores = torch.tensor([[1.0, 2.0, 0.5, 4.0], [0.0, 1.0, 3.0, 9.0]])
    targets = torch.tensor([[3, 7], [7, 0]])  # row 0 has two targets, row 1 one
    loss = multi_target_loss(scores, candidates, targets)
    # row 0, target 3: against 5 and the accidental 5 (7 is the row's other target, masked)
    t03 = -torch.log_softmax(torch.tensor([1.0, 2.0, 4.0]), 0)[0]
    t07 = -torch.log_softmax(torch.tensor([0.5, 2.0, 4.0]), 0)[0]
    t17 = -torch.log_softmax(torch.tensor([3.0, 0.0, 1.0, 9.0]), 0)[0]
    torch.testing.assert_close(loss, (t03 + t07 + t17) / 3)


def test_logq_correction_is_subtracted_from_the_logits() -> None:
    candidates = Candidates(torch.tensor([1, 2]), torch.tensor([0.0, -2.0]), n_distinct=2)
    loss = multi_target_loss(torch.zeros(1, 2), candidates, torch.tensor([[1]]))
    torch.testing.assert_close(loss, -torch.log_softmax(torch.tensor([0.0, 2.0]), 0)[0])


def test_in_batch_candidates_are_the_distinct_targets_then_the_negatives() -> None:
    item_prob = torch.tensor([0.0, 0.5, 0.25, 0.25])
    targets = torch.tensor([[3, 1], [1, 0]])  # three target draws, two distinct items
    cands = in_batch_candidates(targets, torch.tensor([2, 3]), item_prob, n_real=3)
    assert cands.items.tolist() == [1, 3, 2, 3] and cands.n_distinct == 2
    uniform = 2 / 3
    expected = torch.log(torch.tensor([1 - 0.5 ** 3 + uniform, 1 - 0.75 ** 3 + uniform, uniform, uniform]))
    torch.testing.assert_close(cands.log_q, expected)


def test_learning_rate_ends_low_when_the_cpu_budget_ends_before_the_planned_steps() -> None:
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.05)
    assert lr_factor(20, 1000, cfg, budget_progress=0.0) > 0.99
    assert lr_factor(20, 1000, cfg, budget_progress=1.0) == pytest.approx(0.05)
    assert lr_factor(1000, 1000, cfg, budget_progress=0.1) == pytest.approx(0.05)


def test_train_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
