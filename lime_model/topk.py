"""Exact top-K with deterministic ties: score descending, then item id ascending.

Used by evaluation and by the Spark scorer (per user block, and per candidate
shard followed by :func:`merge_topk`).  ``-inf`` scores and excluded entries
are never returned; when a row has fewer than ``k`` eligible entries the
result is padded with id ``-1`` and score ``-inf``.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD_ID = -1


def _order_rows(ids: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row of ``(B, m)`` ids/scores by (score desc, id asc); padding (-inf) goes last."""
    by_id = ids.argsort(dim=1, stable=True)  # (B, m)
    ids, scores = ids.gather(1, by_id), scores.gather(1, by_id)
    by_score = scores.argsort(dim=1, descending=True, stable=True)  # ties keep id order
    ids, scores = ids.gather(1, by_score), scores.gather(1, by_score)
    return ids.masked_fill(scores == float("-inf"), PAD_ID), scores  # (B, m) x 2


def _pad(ids: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    missing = k - ids.shape[1]
    if missing <= 0:
        return ids, scores
    b = ids.shape[0]
    return (torch.cat([ids, ids.new_full((b, missing), PAD_ID)], 1),
            torch.cat([scores, scores.new_full((b, missing), float("-inf"))], 1))


def exact_topk(scores: Tensor, item_ids: Tensor, k: int,
               exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """scores ``(B, C)`` float, item_ids ``(C,)`` int64 (distinct), k >= 1,
    exclude ``(B, C)`` bool | None -> (ids ``(B, k)`` int64, scores ``(B, k)``).

    One ``torch.topk`` of ``k + 1`` per row: the (k+1)-th score tells whether the k-th
    (boundary) score is tied with entries topk left out; only such rows get a fix-up (the
    tied entries with the smallest ids win), so the cost stays one pass over ``(B, C)``.
    NaN scores are rejected (``torch.topk`` ranks NaN above every number, so a row holding
    one has it among its top entries).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, C), got {tuple(scores.shape)}")
    batch, c = scores.shape
    if item_ids.shape != (c,) or item_ids.dtype != torch.int64:
        raise ValueError(f"item_ids must be ({c},) int64, got {tuple(item_ids.shape)} {item_ids.dtype}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude must have shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
    if c == 0:
        return _pad(item_ids.new_empty((batch, 0)), scores.new_empty((batch, 0)), k)
    neg_inf = float("-inf")
    s = scores if exclude is None else scores.masked_fill(exclude, neg_inf)  # (B, C)
    k_eff = min(k, c)
    probe_scores, probe_pos = torch.topk(s, min(k_eff + 1, c), dim=1)  # (B, k_eff[+1]), sorted desc
    if bool(torch.isnan(probe_scores).any()):
        raise ValueError("scores hold NaN")
    top_scores, top_pos = probe_scores[:, :k_eff], probe_pos[:, :k_eff]  # (B, k_eff) views
    boundary = top_scores[:, -1]  # (B,): k-th largest score
    if probe_scores.shape[1] > k_eff:  # an entry left out with the boundary score: ties cross it
        needs_fix = (probe_scores[:, k_eff] == boundary) & (boundary > neg_inf)  # (B,)
    else:
        needs_fix = torch.zeros(batch, dtype=torch.bool, device=scores.device)
    for row in needs_fix.nonzero().flatten().tolist():
        # Keep every entry above the boundary, then the tied ones with the smallest ids.
        above = (s[row] > boundary[row]).nonzero().flatten()  # (k_eff - tied_kept,)
        tied = (s[row] == boundary[row]).nonzero().flatten()  # (tied_total,)
        tied = tied[item_ids[tied].argsort()[: k_eff - len(above)]]
        top_pos[row] = torch.cat([above, tied])
        top_scores[row] = s[row, top_pos[row]]
    ids, out_scores = _order_rows(item_ids[top_pos], top_scores)  # (B, k_eff) x 2
    return _pad(ids, out_scores, k)


def merge_topk(ids_a: Tensor, scores_a: Tensor, ids_b: Tensor, scores_b: Tensor,
               k: int) -> tuple[Tensor, Tensor]:
    """Merge two per-row top lists (e.g. of two candidate shards; ids must not repeat across
    them): ids ``(B, ka)``/``(B, kb)`` int64, scores alike -> (ids ``(B, k)``, scores ``(B, k)``)
    with the same order and padding rules as :func:`exact_topk`."""
    if ids_a.shape != scores_a.shape or ids_b.shape != scores_b.shape or ids_a.shape[0] != ids_b.shape[0]:
        raise ValueError(f"shape mismatch: ids_a {tuple(ids_a.shape)}, scores_a {tuple(scores_a.shape)}, "
                         f"ids_b {tuple(ids_b.shape)}, scores_b {tuple(scores_b.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = torch.cat([ids_a, ids_b], 1)  # (B, ka + kb)
    scores = torch.cat([scores_a, scores_b.to(scores_a.dtype)], 1)  # (B, ka + kb)
    scores = scores.masked_fill(ids == PAD_ID, float("-inf"))
    ids, scores = _order_rows(ids, scores)
    return _pad(ids[:, :k], scores[:, :k], k)
