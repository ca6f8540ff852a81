"""Write the input tables (``events``, ``items``) from the synthetic generator or MovieLens-100K."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lime_model.datasets import load_movielens_100k
from pipelines.tables.schemas import EVENTS, ITEMS
from pipelines.tables.store import ArrowTask, CommitResult, TableStore, WriteRequest, count_text
from pipelines.tools.synthetic_data import SyntheticConfig, generate_block, generate_items

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceWrite:
    events: CommitResult
    items: CommitResult
    first_day: dt.date
    last_day: dt.date


def _generate_task(cfg: SyntheticConfig) -> ArrowTask:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for block in batch.column("id").to_pylist():
                yield from generate_block(cfg, int(block)).to_batches()

    return run


def write_synthetic(spark: SparkSession | None, store: TableStore, cfg: SyntheticConfig) -> SourceWrite:
    """Replace ``events`` and ``items`` with the synthetic world of ``cfg``.

    With a Spark session the user blocks are generated in parallel tasks; without
    one (tests, tiny worlds) on the driver.  Same content either way.
    """
    app = f"generate:seed={cfg.seed}:users={cfg.users}:items={cfg.items}:days={cfg.days}"
    items = store.write_arrow(generate_items(cfg), WriteRequest(ITEMS, "overwrite", f"{app}:items:{_nonce()}"))
    if spark is None:
        table = pa.concat_tables(generate_block(cfg, b) for b in range(cfg.blocks))
        events = store.write_arrow(table, WriteRequest(EVENTS, "overwrite", f"{app}:events:{_nonce()}"))
    else:
        from pyspark.sql.pandas.types import from_arrow_schema

        parallelism = max(1, min(cfg.blocks, spark.sparkContext.defaultParallelism * 4))
        df = spark.range(0, cfg.blocks, numPartitions=parallelism).mapInArrow(
            _generate_task(cfg), from_arrow_schema(EVENTS.schema)
        )
        events = store.write(df, WriteRequest(EVENTS, "overwrite", f"{app}:events:{_nonce()}"))
    log.info("synthetic world: %d users, %d items, %s events (%s .. %s)",
             cfg.users, cfg.items, count_text(events.rows), cfg.start, cfg.last_day)
    return SourceWrite(events, items, cfg.start, cfg.last_day)


def movielens_tables(cache_dir: Path | None = None) -> tuple[pa.Table, pa.Table]:
    """MovieLens-100K as (events, items) Arrow tables in the lakehouse schemas."""
    ml = load_movielens_100k(cache_dir)
    inter = ml.interactions
    micros = inter["timestamp"].to_numpy(np.int64) * 1_000_000
    day = (micros // 86_400_000_000).astype("datetime64[D]").astype(str)
    events = pa.table(
        {
            "event_date": pa.array(day, pa.string()),
            "user_id": pa.array(inter["user_id"].to_numpy(np.int64)),
            "item_id": pa.array(inter["item_id"].to_numpy(np.int64)),
            "ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
        },
        schema=EVENTS.schema,
    )
    items = pa.table(
        {"item_id": pa.array(ml.items["item_id"].to_numpy(np.int64)),
         "title": pa.array(ml.items["title"].tolist(), pa.string())},
        schema=ITEMS.schema,
    )
    return events, items


def write_movielens(store: TableStore, cache_dir: Path | None = None) -> SourceWrite:
    """Replace ``events`` and ``items`` with MovieLens-100K (fetched and verified at run time)."""
    events_table, items_table = movielens_tables(cache_dir)
    nonce = _nonce()
    items = store.write_arrow(items_table, WriteRequest(ITEMS, "overwrite", f"load-movielens:items:{nonce}"))
    events = store.write_arrow(events_table, WriteRequest(EVENTS, "overwrite", f"load-movielens:events:{nonce}"))
    days = events_table.column("event_date")
    first = dt.date.fromisoformat(min(days.to_pylist()))
    last = dt.date.fromisoformat(max(days.to_pylist()))
    log.info("MovieLens-100K: %d events, %d items (%s .. %s)", events.rows, items.rows, first, last)
    return SourceWrite(events, items, first, last)


def _nonce() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
