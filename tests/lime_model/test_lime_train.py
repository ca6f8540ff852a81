"""Training learns an obvious sequential pattern that popularity cannot see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lime_model.data import build_sequences, leave_one_out
from lime_model.train import TrainConfig, default_configs, sampled_softmax_loss, train_model
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


@pytest.mark.parametrize("kind", ["lime-xor", "full-attention"])
def test_training_learns_next_item_pattern_far_above_popularity(kind: str) -> None:
    frame = cyclic_interactions()
    vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy(np.int64))
    split = leave_one_out(build_sequences(frame, vocab))
    small = {"d_model": 32, "n_links": 8, "n_layers": 2, "max_history": 16, "dropout": 0.0}
    model_cfg, _ = default_configs(kind, vocab.num_indices, **small)
    train_cfg = TrainConfig(epochs=8, batch_size=128, lr=5e-3, warmup_steps=5, prefixes_per_user=10,
                            num_negatives=32, patience=8, seed=0, log_every=1000)
    result = train_model(split, model_cfg, train_cfg)
    pop_cfg, pop_train = default_configs("popularity", vocab.num_indices)
    popularity = train_model(split, pop_cfg, pop_train)
    assert popularity.valid_metrics["hr@10"] < 0.35
    assert result.valid_metrics["hr@10"] > 0.9
    assert result.best_epoch >= 1 and result.steps > 0


def test_sampled_softmax_masks_accidental_hits() -> None:
    scores = torch.tensor([[2.0, 0.0, 5.0], [0.0, 1.0, 0.0]])
    candidates = torch.tensor([7, 8, 7])  # row 0's target (7) reappears as a sampled negative
    loss = sampled_softmax_loss(scores, candidates, 2, torch.zeros(3))
    expected = (-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
                - torch.log_softmax(torch.tensor([0.0, 1.0, 0.0]), 0)[1]) / 2
    torch.testing.assert_close(loss, expected)


def test_logq_correction_is_subtracted_from_the_logits() -> None:
    scores = torch.zeros(1, 2)
    log_q = torch.tensor([0.0, -2.0])  # a rarely sampled negative gets a larger logit
    loss = sampled_softmax_loss(scores, torch.tensor([1, 2]), 1, log_q)
    torch.testing.assert_close(loss, -torch.log_softmax(torch.tensor([0.0, 2.0]), 0)[0])


def test_train_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
