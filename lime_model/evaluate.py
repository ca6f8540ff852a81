"""Full-catalogue ranking metrics (no sampled metrics), the same for every model.

For each evaluated user the model scores every item of the vocabulary; the
items of the user's input history are masked (they are never recommended
again); the target's rank is the number of unmasked items that sort before it
under the exact top-K order (score descending, item id ascending), so
``HR@K = mean(rank < K)`` and ``NDCG@K = mean(1 / log2(rank + 2)) over rank < K``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from lime_model.data import LeaveOneOutSplit, right_align

if TYPE_CHECKING:
    from lime_model.model import RankingModel

log = logging.getLogger(__name__)

CUTOFFS = (10, 50)
METRIC_KEYS = tuple(f"{name}@{k}" for k in CUTOFFS for name in ("hr", "ndcg"))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """scores ``(B, C)`` over vocabulary indices 1..C (column j = index j+1), targets ``(B,)``
    indices, seen ``(B, C)`` bool mask -> 0-based ranks ``(B,)`` int64 under (score desc, id asc).

    The target itself is never masked, even when it also appears in ``seen``."""
    rows = torch.arange(len(targets))
    col = targets - 1  # (B,)
    target_score = scores[rows, col][:, None]  # (B, 1)
    seen = seen.clone()
    seen[rows, col] = False
    ids = torch.arange(scores.shape[1])[None]  # (1, C)
    before = (scores > target_score) | ((scores == target_score) & (ids < col[:, None]))  # (B, C)
    return (before & ~seen).sum(1)  # (B,)


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """0-based ranks ``(E,)`` -> each user's NDCG@k ``(E,)`` float64 (one relevant item)."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """0-based ranks ``(E,)`` -> ``{"hr@10", "ndcg@10", "hr@50", "ndcg@50"}``."""
    if not len(ranks):
        return {key: math.nan for key in METRIC_KEYS}
    out = {}
    for k in CUTOFFS:
        out[f"hr@{k}"] = float((ranks < k).mean())
        out[f"ndcg@{k}"] = float(ndcg_per_user(ranks, k).mean())
    return out


@torch.no_grad()
def rank_targets(model: RankingModel, histories: Sequence[np.ndarray], times: Sequence[np.ndarray],
                 targets: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Score the whole catalogue for each user and return the target ranks ``(E,)`` int64.
    Histories longer than ``max_history`` keep their newest items; all their items are masked."""
    cfg = model.cfg
    was_training = model.training
    model.eval()
    catalogue = torch.arange(1, cfg.num_items)  # (C,)
    ranks = np.empty(len(targets), dtype=np.int64)
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths per batch
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            hist = torch.from_numpy(right_align([histories[i][-cfg.max_history:] for i in batch], 0))
            ts = torch.from_numpy(right_align([times[i][-cfg.max_history:] for i in batch], 0.0))
            scores = model.table_scores(hist, ts if cfg.use_time_gaps else None, catalogue)  # (B, C)
            seen = torch.zeros(len(batch), cfg.num_items, dtype=torch.bool)
            for row, i in enumerate(batch):
                seen[row, torch.from_numpy(histories[i])] = True
            ranks[batch] = target_ranks(scores.float(), torch.from_numpy(targets[batch]),
                                        seen[:, 1:]).numpy()
    finally:
        model.train(was_training)
    return ranks


def stage_ranks(model: RankingModel, split: LeaveOneOutSplit, stage: str, batch_size: int = 256
                ) -> tuple[np.ndarray, np.ndarray]:
    """``stage`` ``"valid"`` or ``"test"`` -> (raw user ids ``(E,)``, their targets' 0-based ranks ``(E,)``)."""
    histories, times, targets = split.stage(stage)
    ranks = rank_targets(model, histories, times, targets, batch_size)
    return split.sequences.user_ids[split.eval_users], ranks


def evaluate_split(model: RankingModel, split: LeaveOneOutSplit, stage: str, batch_size: int = 256
                   ) -> dict[str, float]:
    """``stage`` ``"valid"`` or ``"test"`` -> metrics dict (plus ``users``)."""
    _, ranks = stage_ranks(model, split, stage, batch_size)
    return {"users": len(ranks), **metrics_from_ranks(ranks)}
