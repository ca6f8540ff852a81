"""The synthetic world: deterministic, split-independent, and shaped like real event logs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.errors import ConfigError
from pipelines.tables.schemas import EVENTS, ITEMS
from pipelines.tools.synthetic_data import USERS_PER_BLOCK, SyntheticConfig, generate_block, generate_items


def frame(cfg: SyntheticConfig):
    return pa.concat_tables(generate_block(cfg, b) for b in range(cfg.blocks)).to_pandas()


def test_same_seed_same_events_other_seed_other_events() -> None:
    cfg = SyntheticConfig(users=300, items=500, seed=3)
    assert generate_block(cfg, 0).equals(generate_block(SyntheticConfig(users=300, items=500, seed=3), 0))
    assert not generate_block(cfg, 0).equals(generate_block(SyntheticConfig(users=300, items=500, seed=4), 0))


def test_schema_ids_and_time_window() -> None:
    cfg = SyntheticConfig(users=USERS_PER_BLOCK + 10, items=200, days=5)
    table = pa.concat_tables(generate_block(cfg, b) for b in range(cfg.blocks))
    assert table.schema == EVENTS.schema
    df = table.to_pandas()
    assert set(df.user_id.unique()) == set(range(1, cfg.users + 1))  # every user has >= 1 event
    assert set(df.item_id) <= set(generate_items(cfg).column("item_id").to_pylist())
    assert df.event_date.min() >= "2024-01-01" and df.event_date.max() <= "2024-01-05"
    assert (df.ts.dt.strftime("%Y-%m-%d") == df.event_date).all()
    assert generate_items(cfg).schema == ITEMS.schema


def test_popularity_is_skewed_and_duplicates_exist() -> None:
    df = frame(SyntheticConfig(users=2000, items=1000, seed=1))
    counts = df.item_id.value_counts().to_numpy()
    top_share = counts[: len(counts) // 100 or 1].sum() / counts.sum()
    assert top_share > 0.05  # the top 1% of items carry far more than 1% of events
    assert df.duplicated(["user_id", "item_id", "ts"]).sum() > 0


def test_users_drift_to_new_topics() -> None:
    cfg = SyntheticConfig(users=1500, items=2000, seed=2, mean_events_per_user=40)
    df = frame(cfg)
    topic = dict(zip(generate_items(cfg).column("item_id").to_pylist(), cfg.world.topic_of.tolist(), strict=True))
    df["topic"] = df.item_id.map(topic)
    shifted = 0
    long_users = df.groupby("user_id").filter(lambda g: len(g) >= 30).groupby("user_id")
    for _, g in long_users:
        g = g.sort_values("ts")
        half = len(g) // 2
        early, late = set(g.topic.iloc[:half]), set(g.topic.iloc[half:])
        shifted += bool(late - early)
    assert shifted > 0.5 * long_users.ngroups


def test_sequential_signal_next_item_is_predictable() -> None:
    """Consecutive items repeat transitions far more than chance (what sequence models learn)."""
    df = frame(SyntheticConfig(users=1500, items=1000, seed=5)).sort_values(["user_id", "ts"], kind="stable")
    prev = df.groupby("user_id").item_id.shift()
    pairs = df.assign(prev=prev).dropna()
    top_pair_share = pairs.groupby(["prev", "item_id"]).size().groupby(level=0).max().sum() / len(pairs)
    assert top_pair_share > 0.25


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"users": 0, "items": 10}, "users"), ({"users": 10, "items": 1}, "items"),
    ({"users": 10, "items": 10, "days": 0}, "days"), ({"users": 10, "items": 10, "duplicate_rate": 0.9}, "duplicate"),
])
def test_invalid_config_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SyntheticConfig(**kwargs)


@pytest.mark.spark
def test_spark_generation_equals_driver_generation(spark, lakehouse) -> None:
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tools.input_tables import write_synthetic

    cfg = SyntheticConfig(users=USERS_PER_BLOCK * 2 + 7, items=300, seed=9, mean_events_per_user=4)
    on_spark = DeltaRsStore(spark, lakehouse / "a")
    on_driver = DeltaRsStore(None, lakehouse / "b")
    write_synthetic(spark, on_spark, cfg)
    write_synthetic(None, on_driver, cfg)
    cols = ["user_id", "item_id", "ts", "event_date"]
    a = on_spark.read(EVENTS).toPandas()[cols].sort_values(cols).reset_index(drop=True)
    b = DeltaRsStore(spark, lakehouse / "b").read(EVENTS).toPandas()[cols].sort_values(cols).reset_index(drop=True)
    assert len(a) == len(b) > cfg.users
    assert a.equals(b)
    assert np.array_equal(np.sort(a.user_id.unique()), np.arange(1, cfg.users + 1))
