"""Serving and evaluation agree (DESIGN.md §1; issue 18, 4k).

The same events go through the nightly pipeline (extract -> infer -> score, Spark local) and
through what ``lime-rank evaluate`` runs (``read_interactions`` -> ``build_sequences`` ->
``rank_targets``, the full catalogue, the whole history masked), with the same checkpoint.  The
events hold what used to make them disagree: a history longer than the extract window (the
scorer excluded only the window's items), timestamp ties in an order that is not item-id order
(serving broke ties by item id) and an exact duplicate event (serving dropped it, evaluation
kept it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lime_model.checkpoint import build_model, load_checkpoint
from lime_model.data import build_sequences
from lime_model.datasets import read_interactions
from lime_model.evaluate import rank_targets
from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import EVENTS, ITEMS
from pipelines.tables.store import WriteRequest
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-03-05"
# extract's --max-history equals the model's window, so both sides encode the same newest events;
# the seen items are the whole history on both sides
WINDOW = 6
K = 16  # 24 candidates: a list of 16 must reach past the never-seen items of the long user
CATALOGUE = np.arange(100, 124, dtype=np.int64)
LONG_USER, TIE_USER, DUPLICATE_USER = 1, 2, 3

# (user, item, seconds after the start of ds), in source (file) order
EVENTS_IN_SOURCE_ORDER = [
    *[(LONG_USER, 100 + i, 600 * i) for i in range(12)],  # twice the window, all distinct
    (TIE_USER, 110, 0), (TIE_USER, 121, 60), (TIE_USER, 104, 60), (TIE_USER, 117, 60), (TIE_USER, 101, 120),
    (DUPLICATE_USER, 115, 0), (DUPLICATE_USER, 108, 30), (DUPLICATE_USER, 119, 60), (DUPLICATE_USER, 108, 30),
    (DUPLICATE_USER, 102, 90),
    (LONG_USER, 123, 86_400 + 60),  # the day after ds: in neither
]


def _write_inputs(store: DeltaRsStore) -> None:
    start = dt.datetime.fromisoformat(DS).replace(tzinfo=dt.UTC)
    ts = [start + dt.timedelta(seconds=s) for _, _, s in EVENTS_IN_SOURCE_ORDER]
    events = pa.table({
        "event_date": [t.date().isoformat() for t in ts],
        "user_id": [u for u, _, _ in EVENTS_IN_SOURCE_ORDER],
        "item_id": [i for _, i, _ in EVENTS_IN_SOURCE_ORDER],
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
    }, schema=EVENTS.schema)
    store.write_arrow(events, WriteRequest(EVENTS, "overwrite", "events"))
    store.write_arrow(pa.table({"item_id": CATALOGUE, "title": [None] * len(CATALOGUE)}, schema=ITEMS.schema),
                      WriteRequest(ITEMS, "overwrite", "items"))


def _pipeline_lists(spark, store: DeltaRsStore, ckpt: Path) -> dict[int, list[int]]:
    ctx = RunContext.open(spark, store, DS, "run-agree", str(ckpt))
    extract_histories(ctx, WINDOW)
    precompute_candidates(ctx, device="cpu")
    infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))
    score_topk(ctx, ScoringConfig(str(ckpt), ctx.model_version, top_k=K))
    recs = DeltaTable(store.uri("recommendations")).to_pandas().sort_values(["user_id", "rank"])
    return {int(u): [int(i) for i in g.item_id] for u, g in recs.groupby("user_id")}


def _evaluation_lists(store: DeltaRsStore, ckpt: Path) -> dict[int, list[int]]:
    """Each user's top-K of the ranking ``rank_targets`` computes from the history up to ds: every
    item the user has not seen is ranked as a target (its rank among the unseen items)."""
    checkpoint = load_checkpoint(ckpt)
    model = build_model(checkpoint)
    frame = read_interactions(store.uri("events"))
    end = int(dt.datetime.fromisoformat(DS).replace(tzinfo=dt.UTC).timestamp()) + 86_400
    seqs = build_sequences(frame[frame.timestamp < end], checkpoint.vocab)
    lists = {}
    for user, items, times in zip(seqs.user_ids, seqs.items, seqs.times, strict=True):
        unseen = np.setdiff1d(np.arange(1, checkpoint.vocab.num_indices), items)  # (C_u,) indices
        ranks = rank_targets(model, [items] * len(unseen), [times] * len(unseen), unseen)  # (C_u,)
        by_rank = np.argsort(ranks, kind="stable")
        top = unseen[by_rank][ranks[by_rank] < K]
        lists[int(user)] = [int(i) for i in checkpoint.vocab.decode(top)]
    return lists


def test_pipeline_topk_equals_the_ranking_lime_rank_evaluate_computes(spark, tmp_path: Path) -> None:
    store = DeltaRsStore(spark, tmp_path / "lakehouse")
    _write_inputs(store)
    ckpt = tmp_path / "model.ckpt"
    # newest_to_links, as lime-rank train's default: the newest item must be the same one in both
    make_checkpoint(ckpt, CATALOGUE, max_history=WINDOW, newest_to_links=True, seed=4)
    evaluated = _evaluation_lists(store, ckpt)
    assert sorted(evaluated) == [LONG_USER, TIE_USER, DUPLICATE_USER]
    assert len(evaluated[LONG_USER]) == len(CATALOGUE) - 12  # all twelve items seen, not the last six
    served = _pipeline_lists(spark, store, ckpt)
    assert served == evaluated
