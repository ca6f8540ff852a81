"""Scores from the stored quantities: per-user link values x per-candidate tables.

Two equal forms of ``score(u, c) = <u_c, t'_c> + b_c`` with
``u_c = concat_h(sum_k W_c^h[k] V^h_k)``:

* :func:`score_from_tables`: straight from ``V(L_P)`` and the table columns;
* :func:`fold_candidates` + one GEMM: ``score = vec(V) . vec(Z_c) + b_c`` with
  ``Z_c[k, h-block] = W_c^h[k] * t'^h_c``, i.e. ``values.reshape(B, ell*d) @ folded.T + bias``,
  which is what the Spark scorer runs per user block.

Neither needs the model; both cost ``O(ell * d)`` per (user, candidate).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(values: Tensor | None, link_weights: Tensor, cand_vec: Tensor, n_heads: int,
           n_links: int) -> None:
    c, hl = link_weights.shape
    if hl != n_heads * n_links:
        raise ValueError(f"link_weights has {hl} columns, expected n_heads*n_links = {n_heads * n_links}")
    if cand_vec.dim() != 2 or cand_vec.shape[0] != c:
        raise ValueError(f"cand_vec must be ({c}, d), got {tuple(cand_vec.shape)}")
    if cand_vec.shape[1] % n_heads:
        raise ValueError(f"cand_vec width {cand_vec.shape[1]} is not divisible by n_heads={n_heads}")
    if values is not None and (values.dim() != 3 or values.shape[1:] != (n_links, cand_vec.shape[1])):
        raise ValueError(f"values must be (B, {n_links}, {cand_vec.shape[1]}), got {tuple(values.shape)}")


def score_from_tables(values: Tensor, link_weights: Tensor, cand_vec: Tensor, bias: Tensor,
                      n_heads: int) -> Tensor:
    """values ``(B, ell, d)`` = ``V(L_P)``, link_weights ``(C, H*ell)``, cand_vec ``(C, d)``,
    bias ``(C,)`` -> scores ``(B, C)``."""
    batch, n_links, d = values.shape
    _check(values, link_weights, cand_vec, n_heads, n_links)
    c, d_h = cand_vec.shape[0], d // n_heads
    v = values.view(batch, n_links, n_heads, d_h).permute(2, 0, 1, 3)  # (H, B, ell, d_h)
    t = cand_vec.view(c, n_heads, d_h).permute(1, 2, 0)  # (H, d_h, C)
    w = link_weights.view(c, n_heads, n_links).permute(1, 2, 0)  # (H, ell, C)
    per_link = v @ t[:, None]  # (H, B, ell, C): <V^h_k, t'^h_c>
    return (per_link * w[:, None]).sum(dim=(0, 2)) + bias  # (B, C)


def fold_candidates(link_weights: Tensor, cand_vec: Tensor, n_heads: int, n_links: int) -> Tensor:
    """link_weights ``(C, H*ell)``, cand_vec ``(C, d)`` -> folded ``(C, ell*d)`` with
    ``folded[c].view(ell, d)[k, h*d_h:(h+1)*d_h] = W_c^h[k] * t'^h_c``, so that
    ``score = values.reshape(B, ell*d) @ folded.T + bias``."""
    _check(None, link_weights, cand_vec, n_heads, n_links)
    c, d = cand_vec.shape
    w = link_weights.view(c, n_heads, n_links).transpose(1, 2)  # (C, ell, H)
    t = cand_vec.view(c, 1, n_heads, d // n_heads)  # (C, 1, H, d_h)
    return (w[..., None] * t).reshape(c, n_links * d)  # (C, ell*d)


def score_folded(values: Tensor, folded: Tensor, bias: Tensor) -> Tensor:
    """values ``(B, ell, d)``, folded ``(C, ell*d)``, bias ``(C,)`` -> ``(B, C)`` in one GEMM."""
    return torch.addmm(bias, values.reshape(values.shape[0], -1), folded.T)  # (B, C)
