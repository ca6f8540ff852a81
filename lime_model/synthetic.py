"""Seeded random-weight checkpoints: for pipeline tests and throughput benchmarks, where the
cost and the wiring matter and the weights need not be trained."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lime_model.checkpoint import save_checkpoint
from lime_model.config import ModelConfig
from lime_model.model import create_model, init_weights
from lime_model.vocab import ItemVocabulary


def random_checkpoint(path: str | os.PathLike[str], item_ids: np.ndarray, *, model: str = "lime-xor",
                      seed: int = 0, init_std: float = 0.3, **config: Any) -> str:
    """Save a model over ``item_ids`` with seeded random weights; returns its model_version.

    ``init_std`` is wider than training's init so that scores are well separated (exact
    comparisons of rankings are then free of near-ties).  ``config`` overrides ModelConfig fields.
    """
    torch.manual_seed(seed)
    vocab = ItemVocabulary(np.asarray(item_ids, dtype=np.int64))
    cfg = ModelConfig(model=model, num_items=len(vocab) + 1, **{"dropout": 0.0, **config})
    popularity = np.arange(len(vocab), dtype=np.int64)[::-1].copy()
    counts = torch.from_numpy(np.concatenate([[0], popularity])) if model == "popularity" else None
    net = create_model(cfg, counts)
    if model != "popularity":
        init_weights(net)
        with torch.no_grad():
            for name, param in net.named_parameters():
                if param.dim() >= 2 and "norm" not in name:
                    param.normal_(0.0, init_std)
    return save_checkpoint(path, net, vocab, popularity, {"purpose": "random weights (tests, benchmarks)"})
