"""Interactions -> per-user sequences -> temporal leave-one-out split -> training batches.

Protocol (the same for every model):

* each user's interactions are ordered by timestamp (stable on input order);
* users with at least 3 interactions: the last item is the test target, the
  second-last the validation target, the rest is training data;
  users with fewer than 3 are training data only and are not evaluated;
* training examples are history prefixes of the training part: the item at
  position ``t`` is the target of the prefix ``items[:t]`` (newest
  ``max_history`` kept);
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


def right_align(seqs: Sequence[np.ndarray], fill: float | int) -> np.ndarray:
    """Ragged 1-D arrays -> ``(len(seqs), max_len)`` with ``fill`` on the left (newest last)."""
    width = max((len(s) for s in seqs), default=0)
    dtype = np.result_type(*[s.dtype for s in seqs]) if seqs else np.int64
    out = np.full((len(seqs), width), fill, dtype=dtype)
    for row, s in enumerate(seqs):
        if len(s):
            out[row, width - len(s):] = s
    return out


@dataclass(frozen=True)
class UserSequences:
    """Per user, vocabulary indices and timestamps (float64 s) in time order."""

    user_ids: np.ndarray  # (U,) int64 raw user ids
    items: list[np.ndarray]  # U x (n_u,) int64 vocabulary indices
    times: list[np.ndarray]  # U x (n_u,) float64


def build_sequences(frame: pd.DataFrame, vocab: ItemVocabulary) -> UserSequences:
    """``frame`` with ``user_id, item_id, timestamp`` (as ``datasets.read_interactions`` returns it,
    sorted by user then time) -> sequences; items unknown to ``vocab`` are dropped and counted."""
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
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
    """history ``(B, n)`` int64 right-aligned, times ``(B, n)`` float64, targets ``(B,)`` int64."""

    history: np.ndarray
    times: np.ndarray
    targets: np.ndarray


def prefix_batches(split: LeaveOneOutSplit, prefixes_per_user: int, batch_size: int, max_history: int,
                   rng: np.random.Generator, bucket_batches: int = BUCKET_BATCHES) -> Iterator[Batch]:
    """One epoch of prefix examples: each user contributes ``min(prefixes_per_user, n_train - 1)``
    distinct target positions; examples are shuffled, grouped ``bucket_batches`` batches at a time
    and sorted by length inside a group (less padding), and the batches are yielded shuffled."""
    users, ends = [], []
    for u, items in enumerate(split.train_items):
        n_targets = len(items) - 1
        if n_targets < 1:
            continue
        take = min(prefixes_per_user, n_targets)
        ends.append(rng.choice(np.arange(1, len(items)), size=take, replace=False))
        users.append(np.full(take, u))
    if not ends:
        raise InsufficientDataError("no user has two or more training interactions")
    user_arr, end_arr = np.concatenate(users), np.concatenate(ends)
    order = rng.permutation(len(user_arr))
    user_arr, end_arr = user_arr[order], end_arr[order]
    lengths = np.minimum(end_arr, max_history)
    group = batch_size * bucket_batches
    batches = []
    for start in range(0, len(user_arr), group):
        sl = slice(start, start + group)
        by_len = np.argsort(lengths[sl], kind="stable")
        g_users, g_ends = user_arr[sl][by_len], end_arr[sl][by_len]
        for b in range(0, len(g_users), batch_size):
            batches.append((g_users[b:b + batch_size], g_ends[b:b + batch_size]))
    for i in rng.permutation(len(batches)):
        b_users, b_ends = batches[i]
        pairs = list(zip(b_users, b_ends, strict=True))
        hist = [split.train_items[u][max(0, e - max_history):e] for u, e in pairs]
        times = [split.train_times[u][max(0, e - max_history):e] for u, e in pairs]
        targets = np.array([split.train_items[u][e] for u, e in pairs], dtype=np.int64)
        yield Batch(right_align(hist, 0), right_align(times, 0.0), targets)
