"""Small builders shared by tests: random-weight checkpoints and tiny lakehouses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lime_model.checkpoint import save_checkpoint
from lime_model.config import ModelConfig
from lime_model.model import create_model, init_weights
from lime_model.vocab import ItemVocabulary


def make_checkpoint(path: Path, item_ids: np.ndarray, *, model: str = "lime-xor", d_model: int = 16,
                    n_heads: int = 2, n_links: int = 4, n_layers: int = 2, max_history: int = 20,
                    use_time_gaps: bool = True, seed: int = 0) -> str:
    """A checkpoint with seeded random weights over ``item_ids``; returns its model_version."""
    torch.manual_seed(seed)
    vocab = ItemVocabulary(np.asarray(item_ids, dtype=np.int64))
    cfg = ModelConfig(model=model, num_items=len(vocab) + 1, d_model=d_model, n_heads=n_heads,
                      n_links=n_links, n_layers=n_layers, max_history=max_history, dropout=0.0,
                      use_time_gaps=use_time_gaps)
    popularity = np.arange(len(vocab), dtype=np.int64)[::-1].copy()
    net = create_model(cfg, torch.from_numpy(np.concatenate([[0], popularity])) if model == "popularity" else None)
    if model != "popularity":
        init_weights(net)
        with torch.no_grad():  # a wider init than training's, so that scores are well separated
            for name, param in net.named_parameters():
                if param.dim() >= 2 and "norm" not in name:
                    param.normal_(0.0, 0.3)
    return save_checkpoint(path, net, vocab, popularity, {"purpose": "test"})
