"""Dense reference for the link encoders: plain masked multi-head attention.

This is the slow, obviously-correct form the fast path in ``lime_model.model``
is tested against: one self-attention over all ``ell + n`` tokens
``[X_L; X_E]`` with an explicit ``(ell + n)^2`` boolean mask, written with
matmul + softmax (no fused kernel), every block updating every token.

* XOR mask: token ``i`` sees token ``j`` iff exactly one of them is a link.
* MHA mask: links see history; history tokens see nothing and keep their input.

Padding keys are masked in both.  Never use this outside tests: it costs
``O((ell + n)^2 d)`` per block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lime_model.model import LimeModel


def link_mask(n_links: int, key_valid: Tensor, xor: bool) -> Tensor:
    """key_valid ``(B, n)`` bool -> allowed ``(B, ell+n, ell+n)`` bool (query row, key column)."""
    batch, n = key_valid.shape
    is_link = torch.cat([torch.ones(n_links, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    is_link = is_link.to(key_valid.device)  # (T,)
    # XOR: exactly one of (query, key) is a link.  MHA: link queries, history keys.
    pattern = (is_link[:, None] ^ is_link[None, :]) if xor else (is_link[:, None] & ~is_link[None, :])
    keys = torch.cat([torch.ones(batch, n_links, dtype=torch.bool, device=key_valid.device), key_valid], 1)
    return pattern[None] & keys[:, None, :]  # (B, T, T)


def dense_encode_links(model: LimeModel, history: Tensor, timestamps: Tensor | None) -> Tensor:
    """Reference ``L_P`` ``(B, ell, d)`` for ``model`` (lime-xor or lime-mha), same parameters."""
    cfg = model.cfg
    x_e, valid = model.embed(history, timestamps)  # (B, n, d), (B, n)
    batch = x_e.shape[0]
    x = torch.cat([model.links[None].expand(batch, -1, -1), x_e], dim=1)  # (B, T, d), T = ell + n
    allowed = link_mask(cfg.n_links, valid, xor=cfg.model == "lime-xor")  # (B, T, T)
    updated = allowed.any(-1)  # (B, T): rows with no visible key keep their input (MHA history)
    for block in model.link_blocks():
        # after the loop: the newest history token before the last block, which the fast encoder
        # never updates (its history update would feed nothing)
        newest = x[:, -1:]  # (B, 1, d)
        u, q, k, v = block.project(x)  # (B, T, d) x 4
        q, k, v = block.heads(q), block.heads(k), block.heads(v)  # (B, H, T, d_h)
        logits = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)  # (B, H, T, T)
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        probs = torch.nan_to_num(logits.softmax(dim=-1), nan=0.0)  # rows with no key -> 0
        new_x = block.output(x, u, block.merge(probs @ v))  # (B, T, d)
        x = torch.where(updated[..., None], new_x, x)
    links = x[:, : cfg.n_links]  # (B, ell, d)
    return model.final_norm(links + newest if cfg.newest_to_links else links)  # (B, ell, d)
