"""Interactions -> per-user sequences -> temporal leave-one-out split -> training batches.

Protocol (the same for every model):

* each user's interactions are ordered by timestamp (stable on input order), exact
  duplicate events (same user, item and timestamp) kept once, as the nightly
  pipeline does;
* users with at least 3 interactions: the last item is the test target, the
  second-last the validation target, the rest is training data;
  users with fewer than 3 are training data only and are not evaluated;
* training examples are history prefixes of the training part: the items at
  positions ``t .. t + m - 1`` are the targets of the prefix ``items[:t]`` (newest
  ``max_history`` kept; ``m`` the target window, 1 = next item only); sasrec
  trains every position of a whole window of the sequence at once;
* validation ranks ``items[-2]`` from ``items[:-2]``, test ranks ``items[-1]``
  from ``items[:-1]`` (so the validation item is history at test time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lime_model.errors import InsufficientDataError
from lime_model.vocab import ItemVocabulary

log = logging.getLogger(__name__)

MIN_EVAL_INTERACTIONS = 3
BUCKET_BATCHES = 32  # batches per length-sorted group in prefix_batches


def _padded_rows(seqs: Sequence[np.ndarray], fill: float | int, right: bool) -> np.ndarray:
    """Ragged 1-D arrays -> ``(len(seqs), max_len)``, each row flush right (``right``) or left."""
    width = max((len(s) for s in seqs), default=0)
    dtype = np.result_type(*[s.dtype for s in seqs]) if seqs else np.int64
    out = np.full((len(seqs), width), fill, dtype=dtype)
    for row, s in enumerate(seqs):
        if len(s):
            if right:
                out[row, width - len(s):] = s
            else:
                out[row, :len(s)] = s
    return out


def right_align(seqs: Sequence[np.ndarray], fill: float | int) -> np.ndarray:
    """Ragged 1-D arrays -> ``(len(seqs), max_len)`` with ``fill`` on the left (newest last)."""
    return _padded_rows(seqs, fill, right=True)


@dataclass(frozen=True)
class UserSequences:
    """Per user, vocabulary indices and timestamps (float64 s) in time order."""

    user_ids: np.ndarray  # (U,) int64 raw user ids
    items: list[np.ndarray]  # U x (n_u,) int64 vocabulary indices
    times: list[np.ndarray]  # U x (n_u,) float64


def build_sequences(frame: pd.DataFrame, vocab: ItemVocabulary) -> UserSequences:
    """``frame`` with ``user_id, item_id, timestamp`` (as ``datasets.read_interactions`` returns it,
    sorted by user then time) -> sequences; exact duplicate events (same user, item and timestamp)
    are kept once (the first in file order) and items unknown to ``vocab`` are dropped, both
    counted.  Equal timestamps keep the file order.

    These are the nightly pipeline's rules (``pipelines.stages.history_transforms``), so that the lists it serves
    are the lists evaluation measures (DESIGN.md §1)."""
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    distinct = frame.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
    if len(distinct) < len(frame):
        log.warning("dropped %d duplicate interactions (same user, item and timestamp)", len(frame) - len(distinct))
    frame = distinct
    idx = vocab.encode(frame["item_id"].to_numpy(np.int64))
    unknown = int((idx == 0).sum())
    if unknown:
        log.warning("dropped %d interactions with items unknown to the vocabulary", unknown)
    keep = idx != 0
    users = frame["user_id"].to_numpy(np.int64)[keep]
    idx = idx[keep]
    times = frame["timestamp"].to_numpy(np.float64)[keep]
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts = np.concatenate([[0], bounds]) if len(users) else np.array([], dtype=np.int64)
    return UserSequences(user_ids=users[starts], items=np.split(idx, bounds) if len(users) else [],
                         times=np.split(times, bounds) if len(users) else [])


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Temporal leave-one-out split of :class:`UserSequences`.

    train_items/train_times: U x training part (all but the last two for evaluated users).
    eval_users: positions (into user_ids) of users with >= 3 interactions.
    """

    sequences: UserSequences
    train_items: list[np.ndarray]
    train_times: list[np.ndarray]
    eval_users: np.ndarray

    def stage(self, name: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """``"valid"`` or ``"test"`` -> (histories, their timestamps, targets ``(E,)``) for eval users."""
        drop = {"valid": 2, "test": 1}.get(name)
        if drop is None:
            raise ValueError(f"stage must be 'valid' or 'test', got {name!r}")
        seq = self.sequences
        hist = [seq.items[u][:-drop] for u in self.eval_users]
        times = [seq.times[u][:-drop] for u in self.eval_users]
        targets = np.array([seq.items[u][-drop] for u in self.eval_users], dtype=np.int64)
        return hist, times, targets

    def popularity(self, num_items: int) -> np.ndarray:
        """``(num_items - 1,)`` int64 count of each real item in the training part."""
        counts = np.bincount(np.concatenate(self.train_items) if self.train_items else np.zeros(0, np.int64),
                             minlength=num_items)
        return counts[1:num_items].astype(np.int64)


def leave_one_out(seq: UserSequences) -> LeaveOneOutSplit:
    """Split every user (see the module docstring)."""
    lengths = np.array([len(s) for s in seq.items], dtype=np.int64)
    evaluated = lengths >= MIN_EVAL_INTERACTIONS
    train_items = [s[:-2] if ok else s for s, ok in zip(seq.items, evaluated, strict=True)]
    train_times = [t[:-2] if ok else t for t, ok in zip(seq.times, evaluated, strict=True)]
    split = LeaveOneOutSplit(seq, train_items, train_times, np.flatnonzero(evaluated))
    if not len(split.eval_users):
        raise InsufficientDataError(f"no user has >= {MIN_EVAL_INTERACTIONS} interactions to evaluate")
    log.info("leave-one-out: %d users (%d evaluated), %d training interactions",
             len(seq.items), len(split.eval_users), sum(len(s) for s in train_items))
    return split


@dataclass(frozen=True)
class Batch:
    """One training batch.

    history ``(B, n)`` int64 and times ``(B, n)`` float64: right-aligned prefixes (LIME models) or
    left-aligned whole sequences (sasrec, :attr:`left_aligned`).
    targets ``(R, m)`` int64, 0 where there is none: per encoded row, the items it must predict.
    For prefixes ``R = B`` and the row holds the next ``m`` items after the prefix; for sequences
    ``R = B * n`` and row ``b * n + i`` holds the item after position ``i`` of sequence ``b``.
    """

    history: np.ndarray
    times: np.ndarray
    targets: np.ndarray
    left_aligned: bool = False


def left_align_rows(seqs: Sequence[np.ndarray], fill: float | int) -> np.ndarray:
    """Ragged 1-D arrays -> ``(len(seqs), max_len)`` with ``fill`` on the right (oldest first)."""
    return _padded_rows(seqs, fill, right=False)


def length_bucketed(keys: np.ndarray, lengths: np.ndarray, batch_size: int, bucket_batches: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``keys`` ``(E,)``, sort them by length inside groups of ``bucket_batches`` batches
    (less padding), cut batches of ``batch_size`` and return the batches in random order."""
    order = rng.permutation(len(keys))
    keys, lengths = keys[order], lengths[order]
    group = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(keys), group):
        sl = slice(start, start + group)
        sorted_keys = keys[sl][np.argsort(lengths[sl], kind="stable")]
        batches.extend(sorted_keys[b:b + batch_size] for b in range(0, len(sorted_keys), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def plan_prefixes(split: LeaveOneOutSplit, prefixes_per_user: int, batch_size: int, max_history: int,
                  rng: np.random.Generator, bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """One epoch of prefix examples as batches of ``(user, end)`` rows ``(b, 2)``: each user
    contributes ``min(prefixes_per_user, n_train - 1)`` distinct prefix ends."""
    examples = []
    for u, items in enumerate(split.train_items):
        n_targets = len(items) - 1
        if n_targets < 1:
            continue
        ends = rng.choice(np.arange(1, len(items)), size=min(prefixes_per_user, n_targets), replace=False)
        examples.append(np.stack([np.full(len(ends), u), ends], axis=1))
    if not examples:
        raise InsufficientDataError("no user has two or more training interactions")
    rows = np.concatenate(examples)  # (E, 2)
    picked = length_bucketed(np.arange(len(rows)), np.minimum(rows[:, 1], max_history), batch_size,
                             bucket_batches, rng)
    return [rows[b] for b in picked]


def prefix_batch(split: LeaveOneOutSplit, rows: np.ndarray, max_history: int, target_window: int) -> Batch:
    """``(user, end)`` rows ``(B, 2)`` -> the prefixes ``items[:end]`` (newest ``max_history``) and, as
    targets, the next ``target_window`` training items ``items[end:end + target_window]``."""
    hist, times, targets = [], [], np.zeros((len(rows), target_window), dtype=np.int64)
    for r, (u, e) in enumerate(rows):
        items = split.train_items[u]
        hist.append(items[max(0, e - max_history):e])
        times.append(split.train_times[u][max(0, e - max_history):e])
        nxt = items[e:e + target_window]
        targets[r, :len(nxt)] = nxt
    return Batch(right_align(hist, 0), right_align(times, 0.0), targets)


def prefix_batches(split: LeaveOneOutSplit, prefixes_per_user: int, batch_size: int, max_history: int,
                   rng: np.random.Generator, bucket_batches: int = BUCKET_BATCHES,
                   target_window: int = 1) -> Iterator[Batch]:
    """One epoch of prefix batches (:func:`plan_prefixes`, :func:`prefix_batch`)."""
    for rows in plan_prefixes(split, prefixes_per_user, batch_size, max_history, rng, bucket_batches):
        yield prefix_batch(split, rows, max_history, target_window)


def sequence_windows(split: LeaveOneOutSplit, max_history: int) -> np.ndarray:
    """``(W, 3)`` rows ``(user, start, stop)``: every user's training items cut, from the newest end,
    into windows of at most ``max_history + 1`` items that overlap by one, so that every training
    item but each user's first is a target exactly once per epoch."""
    rows = []
    for u, items in enumerate(split.train_items):
        stop = len(items)
        while stop >= 2:
            start = max(0, stop - max_history - 1)
            rows.append((u, start, stop))
            stop = start + 1
    if not rows:
        raise InsufficientDataError("no user has two or more training interactions")
    return np.array(rows, dtype=np.int64)


def plan_sequences(split: LeaveOneOutSplit, batch_size: int, max_history: int, rng: np.random.Generator,
                   bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """One epoch of whole-sequence examples (:func:`sequence_windows`) as batches of rows ``(b, 3)``."""
    windows = sequence_windows(split, max_history)
    picked = length_bucketed(np.arange(len(windows)), windows[:, 2] - windows[:, 1], batch_size,
                             bucket_batches, rng)
    return [windows[b] for b in picked]


def sequence_batch(split: LeaveOneOutSplit, rows: np.ndarray) -> Batch:
    """``(user, start, stop)`` rows ``(B, 3)`` -> left-aligned inputs ``items[start:stop-1]`` and, per
    position, the next item as its target (``(B * n, 1)``, 0 on padding)."""
    inputs = [split.train_items[u][a:b - 1] for u, a, b in rows]
    times = [split.train_times[u][a:b - 1] for u, a, b in rows]
    nexts = left_align_rows([split.train_items[u][a + 1:b] for u, a, b in rows], 0)  # (B, n)
    return Batch(left_align_rows(inputs, 0), left_align_rows(times, 0.0), nexts.reshape(-1, 1),
                 left_aligned=True)
