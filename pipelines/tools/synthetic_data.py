"""Seeded synthetic ``events`` and ``items`` (tests, demos, scale benchmarks).

The generator is built to give a sequence model something to learn and a
pipeline something to get wrong:

* items belong to topics and have Zipf-skewed popularity;
* each user has 1-3 interest topics with weights; halfway through their
  activity one interest drifts to a new topic (interest drift over time);
* within a topic, users often move to the "next" item of the topic's order
  (sequential signal that an attention model can exploit, a popularity model cannot);
* a small fraction of exact duplicate events (as event logs have).

Generation is deterministic for a given config and independent of how the work
is split: users are generated in fixed blocks of :data:`USERS_PER_BLOCK`, each
block with its own RNG seeded by ``(seed, block)``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from pipelines.errors import ConfigError
from pipelines.tables.schemas import EVENTS, ITEMS

USERS_PER_BLOCK = 5_000
FIRST_ITEM_ID = 1_000  # raw ids are neither 0-based nor contiguous, to catch id-mapping bugs
ITEM_ID_STRIDE = 3
MAX_EVENTS_PER_USER = 400


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and shape of the synthetic world.  ``start`` is the first event day (UTC)."""

    users: int
    items: int
    days: int = 30
    seed: int = 0
    start: dt.date = dt.date(2024, 1, 1)
    mean_events_per_user: float = 30.0
    duplicate_rate: float = 0.005
    zipf_exponent: float = 1.0
    sequential_prob: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.users <= 100_000_000:
            raise ConfigError(f"users must be in [1, 1e8], got {self.users}")
        if not 2 <= self.items <= 100_000_000:
            raise ConfigError(f"items must be in [2, 1e8], got {self.items}")
        if not 1 <= self.days <= 3650:
            raise ConfigError(f"days must be in [1, 3650], got {self.days}")
        if not 1.0 <= self.mean_events_per_user <= MAX_EVENTS_PER_USER:
            raise ConfigError(f"mean_events_per_user must be in [1, {MAX_EVENTS_PER_USER}]")
        if not 0.0 <= self.duplicate_rate < 0.5:
            raise ConfigError(f"duplicate_rate must be in [0, 0.5), got {self.duplicate_rate}")

    @property
    def last_day(self) -> dt.date:
        return self.start + dt.timedelta(days=self.days - 1)

    @property
    def blocks(self) -> int:
        return -(-self.users // USERS_PER_BLOCK)

    @cached_property
    def world(self) -> _World:
        return _World.build(self)


def item_ids(n_items: int) -> np.ndarray:
    return FIRST_ITEM_ID + ITEM_ID_STRIDE * np.arange(n_items, dtype=np.int64)


@dataclass(frozen=True)
class _World:
    """Item topics and popularity, shared by every user block."""

    n_topics: int
    topic_of: np.ndarray  # (M,) topic of item position
    order: np.ndarray  # (M,) item positions grouped by topic, most popular first
    topic_start: np.ndarray  # (T+1,) offsets into order
    global_cdf: np.ndarray  # (M,) topic + within-topic cdf (for one searchsorted over all topics)
    popularity_cdf: np.ndarray  # (M,) global popularity cdf over item positions

    @classmethod
    def build(cls, cfg: SyntheticConfig) -> _World:
        rng = np.random.default_rng([cfg.seed, 0xC0FFEE])
        m = cfg.items
        n_topics = int(np.clip(m // 40, 2, 64))
        topic_of = rng.integers(0, n_topics, size=m)
        weight = 1.0 / (rng.permutation(m) + 1.0) ** cfg.zipf_exponent
        order = np.lexsort((-weight, topic_of))
        counts = np.bincount(topic_of, minlength=n_topics)
        topic_start = np.concatenate([[0], np.cumsum(counts)])
        global_cdf = np.empty(m)
        for t in range(n_topics):
            lo, hi = topic_start[t], topic_start[t + 1]
            if hi > lo:
                w = weight[order[lo:hi]]
                global_cdf[lo:hi] = t + np.cumsum(w) / w.sum() * (1 - 1e-12)
        # empty topics are never chosen (users pick topics among non-empty ones)
        pop = np.cumsum(weight) / weight.sum()
        return cls(n_topics, topic_of, order, topic_start, global_cdf, pop)


def generate_block(cfg: SyntheticConfig, block: int) -> pa.Table:
    """Events of users ``[block*USERS_PER_BLOCK, ...)`` as a table with EVENTS' columns."""
    world = cfg.world
    rng = np.random.default_rng([cfg.seed, block])
    first = block * USERS_PER_BLOCK
    users = np.arange(first, min(first + USERS_PER_BLOCK, cfg.users), dtype=np.int64)
    u = len(users)
    # events per user: 1 + geometric, capped
    n_events = np.minimum(rng.geometric(1.0 / cfg.mean_events_per_user, size=u), MAX_EVENTS_PER_USER)
    nonempty = np.flatnonzero(np.diff(world.topic_start) > 0)
    interests = nonempty[rng.integers(0, len(nonempty), size=(u, 3))]  # (u, 3)
    drift_to = nonempty[rng.integers(0, len(nonempty), size=u)]  # (u,)
    k_interests = rng.integers(1, 4, size=u)  # 1..3 active slots
    slot_w = rng.dirichlet(np.ones(3), size=u) * (np.arange(3)[None, :] < k_interests[:, None])
    slot_cdf = np.cumsum(slot_w / slot_w.sum(axis=1, keepdims=True), axis=1)

    span = cfg.days * 86_400
    active_start = rng.uniform(0, span * 0.7, size=u)
    mean_gap = (span - active_start) / (n_events + 1)

    max_n = int(n_events.max())
    items = np.full((u, max_n), -1, dtype=np.int64)
    times = np.zeros((u, max_n))
    prev_pos = np.full(u, -1, dtype=np.int64)  # position in world.order of the previous item
    clock = active_start.copy()
    for j in range(max_n):
        live = np.flatnonzero(n_events > j)
        k = len(live)
        slot = (rng.random(k)[:, None] > slot_cdf[live]).sum(axis=1).clip(0, 2)
        topic = interests[live, slot]
        drifted = (j >= n_events[live] // 2) & (slot == 0)
        topic = np.where(drifted, drift_to[live], topic)
        choice = rng.random(k)
        pos = np.searchsorted(world.global_cdf, topic + rng.random(k) * (1 - 1e-9))
        pos = np.minimum(pos, world.topic_start[topic + 1] - 1)
        # sequential step: the next item of the previous item's topic order
        seq = (choice < cfg.sequential_prob) & (prev_pos[live] >= 0)
        if seq.any():
            p = prev_pos[live][seq]
            t = world.topic_of[world.order[p]]
            nxt = p + 1
            wrap = nxt >= world.topic_start[t + 1]
            nxt[wrap] = world.topic_start[t][wrap]
            pos[seq] = nxt
        # noise: a globally popular item
        noise = choice > 0.92
        pos[noise] = np.searchsorted(world.popularity_cdf, rng.random(int(noise.sum())))
        pos = np.minimum(pos, cfg.items - 1)
        item_pos = np.where(noise, pos, world.order[pos])
        items[live, j] = item_pos
        prev_pos[live] = np.where(noise, prev_pos[live], pos)
        clock[live] += rng.exponential(mean_gap[live])
        times[live, j] = np.minimum(clock[live], span - 1)

    return _events_table(cfg, users, items, times, rng)


def _events_table(cfg: SyntheticConfig, users: np.ndarray, items: np.ndarray, times: np.ndarray,
                  rng: np.random.Generator) -> pa.Table:
    """Walked items ``(u, max_n)`` (-1 = none) and seconds -> EVENTS rows, with the configured
    share of exact duplicates appended (drawn from ``rng`` after the walk, so seeds reproduce)."""
    mask = items >= 0
    user_col = np.repeat(users, mask.sum(axis=1))
    item_col = item_ids(cfg.items)[items[mask]]
    seconds = times[mask]
    if cfg.duplicate_rate > 0 and len(user_col):
        dup = np.flatnonzero(rng.random(len(user_col)) < cfg.duplicate_rate)
        user_col = np.concatenate([user_col, user_col[dup]])
        item_col = np.concatenate([item_col, item_col[dup]])
        seconds = np.concatenate([seconds, seconds[dup]])
    epoch0 = int(dt.datetime.combine(cfg.start, dt.time(), tzinfo=dt.UTC).timestamp())
    micros = (epoch0 + np.floor(seconds)).astype(np.int64) * 1_000_000
    day = (micros // 86_400_000_000).astype("datetime64[D]").astype(str)
    return pa.table(
        {
            "event_date": pa.array(day, pa.string()),
            "user_id": pa.array(user_col + 1, pa.int64()),  # raw user ids start at 1
            "item_id": pa.array(item_col, pa.int64()),
            "ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
        },
        schema=EVENTS.schema,
    )


def generate_items(cfg: SyntheticConfig) -> pa.Table:
    ids = item_ids(cfg.items)
    topics = cfg.world.topic_of
    titles = [f"item {i} (topic {t})" for i, t in zip(ids.tolist(), topics.tolist(), strict=True)]
    return pa.table({"item_id": pa.array(ids, pa.int64()), "title": pa.array(titles, pa.string())},
                    schema=ITEMS.schema)
