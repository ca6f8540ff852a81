"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lime_model.synthetic import random_checkpoint


def make_checkpoint(path: Path, item_ids: np.ndarray, *, model: str = "lime-xor", d_model: int = 16,
                    n_heads: int = 2, n_links: int = 4, n_layers: int = 2, max_history: int = 20,
                    use_time_gaps: bool = True, newest_to_links: bool = False, seed: int = 0) -> str:
    """A small random-weight checkpoint over ``item_ids``; returns its model_version."""
    return random_checkpoint(path, item_ids, model=model, seed=seed, d_model=d_model, n_heads=n_heads,
                             n_links=n_links, n_layers=n_layers, max_history=max_history,
                             use_time_gaps=use_time_gaps, newest_to_links=newest_to_links)
