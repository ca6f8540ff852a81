"""Batched user-side inference: histories -> ``L_P`` rows for the ``user_links`` table.

Users are grouped by the width their history is padded to (:func:`padded_length`, a
function of their own length only, so that a user's ``L_P`` does not depend on the other
users of a run) and cut into batches of at most ``max_tokens_per_batch`` cells; the output
rows come back in input order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from lime_model.model import LimeModel

log = logging.getLogger(__name__)


EXACT_LENGTHS = 64  # histories up to this long are batched with others of exactly their length


def padded_length(n: int, limit: int) -> int:
    """The width a history of ``n`` items is padded to: ``n`` itself up to :data:`EXACT_LENGTHS`,
    beyond that ``n`` rounded up to an eighth of its power of two (at most 12.5% padding).

    It depends on the user's own length only, never on the other users of a batch: padding
    changes the float rounding of attention, so a user's ``L_P`` would otherwise change (by
    ~1e-5) with whoever shares the batch, and an incremental night, which encodes only some
    users, would not reproduce a full one.  Never more than ``limit`` (the model's
    ``max_history``, at least ``n``)."""
    if n <= EXACT_LENGTHS:
        return max(n, 1)
    step = 1 << (n.bit_length() - 4)
    return min(-(-n // step) * step, limit)


def length_batches(lengths: np.ndarray, max_tokens_per_batch: int, limit: int) -> list[np.ndarray]:
    """lengths ``(U,)`` (each at most ``limit``) -> batches of user positions, longest first, each
    of one :func:`padded_length` and with ``len(batch) * padded_length <= max_tokens_per_batch``
    (or a single user)."""
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}")
    widths = np.fromiter((padded_length(int(n), limit) for n in lengths), dtype=np.int64, count=len(lengths))
    order = np.lexsort((-lengths, -widths))  # (U,) widest first, stable by length
    batches = []
    for width in np.unique(widths)[::-1]:
        group = order[widths[order] == width]
        size = max(1, max_tokens_per_batch // int(width))
        batches += [group[i:i + size] for i in range(0, len(group), size)]
    return batches


def _aligned(rows: list[np.ndarray], width: int, fill: float | int) -> np.ndarray:
    """Rows flush right in a ``(len(rows), width)`` array filled with ``fill`` (newest last)."""
    out = np.full((len(rows), width), fill, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, width - len(row):] = row
    return out


def encode_histories(model: LimeModel, histories: Sequence[np.ndarray], timestamps: Sequence[np.ndarray] | None,
                     device: torch.device, max_tokens_per_batch: int = 65536) -> np.ndarray:
    """``L_P`` for every user, flattened row-major: ``(U, ell*d)`` float32.

    histories: per user, an int64 array of vocabulary indices (1..num_items-1), oldest first;
    only the newest ``max_history`` are used.  timestamps: per user, float64 epoch seconds
    aligned with the history, or None (only for models trained without time gaps).
    Runs under ``torch.inference_mode()``; bf16 autocast on CUDA only.  An empty history
    is a ``ValueError`` (such users get no ``L_P``; the pipeline falls back to popularity).
    """
    cfg = model.cfg
    if not cfg.is_lime:
        raise ValueError(f"encode_histories needs a LIME model, got {cfg.model!r}")
    if timestamps is not None and len(timestamps) != len(histories):
        raise ValueError(f"{len(histories)} histories but {len(timestamps)} timestamp arrays")
    cut = cfg.max_history
    hist = [np.asarray(h)[-cut:] for h in histories]
    times = None if timestamps is None else [np.asarray(t, dtype=np.float64)[-cut:] for t in timestamps]
    for i, h in enumerate(hist):
        if h.dtype != np.int64 or h.ndim != 1:
            raise ValueError(f"history {i} must be a 1-D int64 array, got {h.dtype} {h.shape}")
        if h.size == 0:
            raise ValueError(f"history {i} is empty: a user without history gets no L_P")
        if h.min() < 1 or h.max() >= cfg.num_items:
            raise ValueError(f"history {i} holds indices outside 1..{cfg.num_items - 1}")
        if times is not None and times[i].shape != h.shape:
            raise ValueError(f"timestamps {i} has shape {times[i].shape}, history {i} has {h.shape}")

    width = cfg.n_links * cfg.d_model
    out = np.empty((len(hist), width), dtype=np.float32)
    if not hist:
        return out
    lengths = np.fromiter((len(h) for h in hist), dtype=np.int64, count=len(hist))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            for batch in length_batches(lengths, max_tokens_per_batch, cut):
                cols = padded_length(int(lengths[batch[0]]), cut)
                items = torch.from_numpy(_aligned([hist[i] for i in batch], cols, 0)).to(device)  # (b, n)
                seconds = None
                if times is not None:
                    seconds = torch.from_numpy(_aligned([times[i] for i in batch], cols, 0.0)).to(device)  # (b, n)
                l_p = model.encode_links(items, seconds)  # (b, ell, d)
                out[batch] = l_p.float().reshape(len(batch), width).cpu().numpy()
    finally:
        model.train(was_training)
    log.debug("encoded %d users (%d tokens)", len(hist), int(lengths.sum()))
    return out
