"""score_topk sizes the seen-list broadcast from the seen sets it has (user_histories.n_seen), not
from the model's window nor from extract's window (the seen items are all of a user's items)."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.stages.scoring_plan import seen_lists_bytes
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-01-08"
MODEL_WINDOW = 4  # the model encodes the last 4 events
EXTRACT_WINDOW = 8  # extract keeps the last 8 per user; the seen lists hold all of a user's items


def test_seen_list_broadcast_is_sized_from_the_largest_seen_set_not_a_history_window(spark, tmp_path) -> None:
    cfg = SyntheticConfig(users=60, items=50, days=10, seed=5, mean_events_per_user=15)
    store = DeltaRsStore(spark, tmp_path / "lakehouse")
    write_synthetic(None, store, cfg)
    ckpt = tmp_path / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items), max_history=MODEL_WINDOW)
    ctx = RunContext.open(spark, store, DS, "run", str(ckpt))
    extract_histories(ctx, EXTRACT_WINDOW)
    histories = DeltaTable(str(store.uri("user_histories"))).to_pandas()
    assert histories.n.max() == EXTRACT_WINDOW and histories.n_seen.max() > EXTRACT_WINDOW + 2
    precompute_candidates(ctx, "cpu")
    infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))
    # room for every user's list at extract's window (and so at the model's), not at the real seen sets
    window_bound = seen_lists_bytes(len(histories), EXTRACT_WINDOW) + 1
    result = score_topk(ctx, ScoringConfig(str(ckpt), ctx.model_version, top_k=5,
                                                   seen_broadcast_max_bytes=window_bound))
    assert result.metrics["seen_join"] == "shuffle"
    # room for the largest seen set: broadcast
    ctx = RunContext.open(spark, store, DS, "run-fits", str(ckpt))
    seen_bound = seen_lists_bytes(len(histories), int(histories.n_seen.max()))
    result = score_topk(ctx, ScoringConfig(str(ckpt), ctx.model_version, top_k=5,
                                                   seen_broadcast_max_bytes=seen_bound))
    assert result.metrics["seen_join"] == "broadcast"
