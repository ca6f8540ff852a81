"""score_topk sizes the seen-list broadcast from the histories it has, not from the model's window."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from pipelines import nightly
from pipelines.inference import InferenceConfig
from pipelines.lakehouse import DeltaRsStore
from pipelines.scoring import ScoringConfig
from pipelines.sources import write_synthetic
from pipelines.synthetic import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-01-08"
MODEL_WINDOW = 4  # the model encodes the last 4 events
EXTRACT_WINDOW = 40  # extract keeps up to 40 per user: the seen lists are longer than the model's window


def test_seen_list_broadcast_is_sized_from_the_longest_history_not_the_model_window(spark, tmp_path) -> None:
    cfg = SyntheticConfig(users=60, items=50, days=10, seed=5, mean_events_per_user=15)
    store = DeltaRsStore(spark, tmp_path / "lakehouse")
    write_synthetic(None, store, cfg)
    ckpt = tmp_path / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items), max_history=MODEL_WINDOW)
    ctx = nightly.RunContext.open(spark, store, DS, "run", str(ckpt))
    nightly.extract_histories(ctx, EXTRACT_WINDOW)
    histories = DeltaTable(str(store.uri("user_histories"))).to_pandas()
    assert histories.n.max() > 2 * MODEL_WINDOW
    nightly.precompute_candidates(ctx, "cpu")
    nightly.infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))
    # room for every user's list at the model's window, not at the histories' real length
    bound = len(histories) * (8 * MODEL_WINDOW + 24) + 1
    result = nightly.score_topk(ctx, ScoringConfig(str(ckpt), ctx.model_version, top_k=5,
                                                   seen_broadcast_max_bytes=bound))
    assert result.metrics["seen_join"] == "shuffle"
