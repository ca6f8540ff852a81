"""The evaluation protocol on the real MovieLens-100K (fetched at run time, never committed)."""

from __future__ import annotations

import numpy as np
import pytest

from lime_model.data import build_sequences, leave_one_out
from lime_model.datasets import read_interactions
from lime_model.evaluate import evaluate_split
from lime_model.train import default_configs, train_model
from lime_model.vocab import ItemVocabulary

pytestmark = pytest.mark.network  # the first run fetches the recbole wheel from the package index


@pytest.fixture(scope="module")
def movielens_split():
    frame = read_interactions("ml-100k")
    vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy(np.int64))
    return vocab, leave_one_out(build_sequences(frame, vocab))


def test_movielens_leave_one_out_covers_every_user_and_item(movielens_split) -> None:
    vocab, split = movielens_split
    assert len(vocab) == 1682
    assert len(split.eval_users) == 943
    assert sum(len(s) for s in split.train_items) == 100_000 - 2 * 943
    assert split.popularity(vocab.num_indices).sum() == 100_000 - 2 * 943


def test_popularity_baseline_on_movielens_test_split(movielens_split) -> None:
    """Regression guard for the protocol (split, history masking, tie order, metric formulas)."""
    vocab, split = movielens_split
    model_cfg, train_cfg = default_configs("popularity", vocab.num_indices)
    model = train_model(split, model_cfg, train_cfg).model
    metrics = evaluate_split(model, split, "test")
    assert metrics["users"] == 943
    assert metrics["hr@10"] == pytest.approx(81 / 943)
    assert metrics["ndcg@10"] == pytest.approx(0.0448845641911155, abs=1e-9)
    assert metrics["hr@50"] == pytest.approx(187 / 943)
