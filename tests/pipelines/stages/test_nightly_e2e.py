"""The nightly stages end to end on a synthetic lakehouse, against a single-process reference."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from deltalake import DeltaTable

from lime_model.checkpoint import build_model, load_checkpoint
from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import STAGES, RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.store import WriteRequest
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-01-08"
K = 7
MAX_HISTORY = 12


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("nightly")
    cfg = SyntheticConfig(users=400, items=250, days=10, seed=11, mean_events_per_user=10)
    store = DeltaRsStore(spark, root / "lakehouse")
    write_synthetic(None, store, cfg)
    # the model knows 230 of the 250 items: unknown items must be dropped and counted
    ckpt = root / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items)[:230], max_history=MAX_HISTORY)
    ctx = RunContext.open(spark, store, DS, "run-1", str(ckpt))
    extract_histories(ctx, MAX_HISTORY)
    precompute_candidates(ctx)
    infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))
    scoring = ScoringConfig(str(ckpt), ctx.model_version, top_k=K, candidate_block=64)
    score_topk(ctx, scoring)
    return {"root": root, "store": store, "ckpt": ckpt, "ctx": ctx, "scoring": scoring, "cfg": cfg}


def events_in_source_order(uri: str) -> pd.DataFrame:
    """The events table's rows in source order: data files by path, rows in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = DeltaTable(uri)
    parts = [pq.read_table(f.removeprefix("file://")) for f in sorted(table.file_uris())]
    return pa.concat_tables(parts, promote_options="default").to_pandas()


def reference(world: dict, exclude_seen: bool = True) -> pd.DataFrame:
    """Recommendations computed directly with lime_model from the raw events (pandas, no Spark):
    exact duplicates dropped, ties of ts in source order, every known item up to ds excluded."""
    ckpt = load_checkpoint(world["ckpt"])
    model = build_model(ckpt)
    vocab = ckpt.vocab
    events = events_in_source_order(str(world["store"].uri("events")))
    catalogue = DeltaTable(str(world["store"].uri("items"))).to_pandas().item_id
    end = pd.Timestamp(dt.date.fromisoformat(DS) + dt.timedelta(days=1), tz="UTC")
    ev = events[events.ts < end].drop_duplicates(["user_id", "item_id", "ts"])
    ev = ev[ev.item_id.isin(vocab.item_ids)].sort_values(["user_id", "ts"], kind="stable")
    last = ev.groupby("user_id").tail(MAX_HISTORY)
    seen = ev.groupby("user_id").item_id.unique()
    cands = np.sort(np.intersect1d(catalogue.to_numpy(), vocab.item_ids))
    cand_idx = torch.from_numpy(vocab.encode(cands))
    rows = []
    for user in sorted(events[events.ts < end].user_id.unique()):
        hist = last[last.user_id == user]
        if hist.empty:
            continue
        h = torch.from_numpy(vocab.encode(hist.item_id.to_numpy()))[None]
        seconds = (hist.ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
        t = torch.from_numpy(seconds)[None]
        with torch.inference_mode():
            scores = model.forward_scores(h, t, cand_idx)[0].double().numpy()
        if exclude_seen:
            scores[np.isin(cands, seen[user])] = -np.inf
        order = np.lexsort((cands, -scores))[:K]
        rows += [(int(user), r + 1, int(cands[i]), float(scores[i])) for r, i in enumerate(order)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


def written(world: dict, version: int | None = None) -> pd.DataFrame:
    table = DeltaTable(str(world["store"].uri("recommendations")), version=version)
    df = table.to_pandas()
    return df[df.ds == DS].sort_values(["user_id", "rank"]).reset_index(drop=True)


def test_recommendations_equal_single_process_reference(world: dict) -> None:
    got = written(world)
    model_rows = got[got.source == "model"].reset_index(drop=True)
    expected = reference(world)
    assert len(expected) > 300 * K
    pd.testing.assert_frame_equal(model_rows[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]],
                                  check_dtype=False)
    np.testing.assert_allclose(model_rows.score.to_numpy(), expected.score.to_numpy(), rtol=1e-5, atol=1e-5)
    assert (got.model_version == world["ctx"].model_version).all()


def test_cold_users_get_the_popularity_list(world: dict) -> None:
    got = written(world)
    histories = DeltaTable(str(world["store"].uri("user_histories"))).to_pandas()
    cold = set(histories[histories.n == 0].user_id)
    assert cold, "the synthetic world must contain users whose items are all unknown to the model"
    popular = got[got.source == "popular"]
    assert set(popular.user_id) == cold
    counts = pd.Series(np.concatenate(histories.item_ids.to_numpy())).value_counts()
    cands = load_checkpoint(world["ckpt"]).vocab.item_ids
    counts = counts[counts.index.isin(cands)]
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:K]
    for _, lst in popular.groupby("user_id"):
        assert list(lst.sort_values("rank").item_id) == [i for i, _ in expected]


def test_sharded_candidates_give_the_same_lists(world: dict, spark) -> None:
    ctx = RunContext.open(spark, world["store"], DS, "run-sharded", str(world["ckpt"]))
    before = written(world)
    sharded = ScoringConfig(str(world["ckpt"]), ctx.model_version, top_k=K, candidate_mode="sharded",
                            shards=3, candidate_block=50)
    result = score_topk(ctx, sharded)
    assert result.metrics["candidate_mode"] == "sharded" and result.metrics["shards"] == 3
    # the small default world: seen lists broadcast, each task reads one user_links file itself
    assert result.metrics["seen_join"] == "broadcast" and result.metrics["scoring_input"] == "link_files"
    after = written(world)
    pd.testing.assert_frame_equal(before.drop(columns="score"), after.drop(columns="score"))
    np.testing.assert_allclose(before.score, after.score, rtol=1e-6)


def test_seen_lists_joined_by_a_shuffle_give_the_same_lists(world: dict, spark) -> None:
    """Above seen_broadcast_max_bytes the seen lists are joined by a shuffle and users repartitioned."""
    ctx = RunContext.open(spark, world["store"], DS, "run-seen-shuffle", str(world["ckpt"]))
    before = written(world)
    cfg = ScoringConfig(str(world["ckpt"]), ctx.model_version, top_k=K, seen_broadcast_max_bytes=0)
    result = score_topk(ctx, cfg)
    assert result.metrics["seen_join"] == "shuffle"
    assert result.metrics["scoring_input"] == "spark_join"
    assert result.metrics["scoring_partitions"] == 2 * spark.sparkContext.defaultParallelism
    after = written(world)
    pd.testing.assert_frame_equal(before.drop(columns="score"), after.drop(columns="score"))
    np.testing.assert_allclose(before.score, after.score, rtol=1e-6)


def test_failing_gate_commits_nothing_and_leaves_no_file(world: dict, spark, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scoring tasks write their rows before the gate runs; a failing gate must drop them."""
    from pipelines.errors import QualityGateError
    from pipelines.stages import quality_gate as quality
    from pipelines.tables.audit import read_audit

    real_gate = quality.check_recommendations

    def failing_gate(*args, **kwargs):
        report = real_gate(*args, **kwargs)
        return quality.QualityReport(report.table, report.ds,
                                     [*report.checks, quality.Check("injected", False, "made to fail")], report.stats)

    monkeypatch.setattr(quality, "check_recommendations", failing_gate)
    uri = world["store"].uri("recommendations")
    version, before = DeltaTable(uri).version(), written(world)
    on_disk = set((Path(uri) / f"ds={DS}").iterdir())
    ctx = RunContext.open(spark, world["store"], DS, "run-gate-fails", str(world["ckpt"]))
    with pytest.raises(QualityGateError, match="injected: made to fail"):
        score_topk(ctx, world["scoring"])
    assert DeltaTable(uri).version() == version
    pd.testing.assert_frame_equal(before, written(world))
    assert set((Path(uri) / f"ds={DS}").iterdir()) == on_disk
    [row] = [r for r in read_audit(world["store"], DS) if r["run_id"] == "run-gate-fails"]
    assert row["status"] == "failed" and row["metrics"]["quality"]["checks"]["injected"] is False


def test_rerun_of_same_ds_leaves_identical_content_and_replaces_only_that_partition(world: dict, spark) -> None:
    store = world["store"]
    uri = store.uri("recommendations")
    # another day exists and must be untouched by the rerun
    other = written(world).assign(ds="2024-01-07")
    import pyarrow as pa

    from pipelines.tables.schemas import RECOMMENDATIONS

    store.write_arrow(pa.Table.from_pandas(other, schema=RECOMMENDATIONS.schema, preserve_index=False),
                      WriteRequest(RECOMMENDATIONS, "overwrite", "other-day", partition={"ds": "2024-01-07"}))
    before_version = DeltaTable(uri).version()
    before = written(world)
    other_files = {f for f in DeltaTable(uri).file_uris() if "ds=2024-01-07" in f}
    ctx = RunContext.open(spark, store, DS, "run-2", str(world["ckpt"]))
    extract_histories(ctx, MAX_HISTORY)
    infer_user_links(ctx, InferenceConfig(str(world["ckpt"]), ctx.model_version, device="cpu"))
    score_topk(ctx, world["scoring"])
    table = DeltaTable(uri)
    assert table.version() == before_version + 1
    pd.testing.assert_frame_equal(before, written(world))
    assert {f for f in table.file_uris() if "ds=2024-01-07" in f} == other_files
    last = table.history(1)[0]
    assert last["operation"] == "WRITE" and last["operationParameters"]["mode"] == "Overwrite"
    removed = [a for a in _log_actions(uri, table.version()) if "remove" in a]
    assert removed and all("ds=" + DS in a["remove"]["path"] for a in removed)


def _log_actions(uri: str, version: int) -> list[dict]:
    import json

    path = Path(uri) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_retry_of_the_same_run_is_a_no_op(world: dict, spark) -> None:
    uri = world["store"].uri("recommendations")
    version = DeltaTable(uri).version()
    ctx = RunContext.open(spark, world["store"], DS, "run-1", str(world["ckpt"]))
    result = score_topk(ctx, world["scoring"])
    assert result.skipped
    assert DeltaTable(uri).version() == version


def test_audit_records_every_stage_with_drop_counts(world: dict) -> None:
    from pipelines.tables.audit import read_audit

    rows = [r for r in read_audit(world["store"], DS) if r["run_id"] == "run-1"]
    jobs = [r["job"] for r in rows]
    assert jobs[:4] == list(STAGES)
    extract = rows[0]["metrics"]
    for key in ("events_read", "events_after_ds", "duplicate_events", "unknown_items", "truncated_events"):
        assert key in extract
    assert extract["events_after_ds"] > 0 and extract["duplicate_events"] > 0 and extract["unknown_items"] > 0
    infer = rows[2]["metrics"]
    assert infer["users"] == infer["rows_written"] and infer["devices"] == ["cpu"]


def restore_default_lists(world: dict, spark) -> None:
    """Score ds again with the module's default settings: the other tests read those lists."""
    score_topk(RunContext.open(spark, world["store"], DS, f"restore-{uuid.uuid4().hex[:8]}", str(world["ckpt"])),
               world["scoring"])


def test_per_user_candidate_lists_restrict_each_users_ranking(world: dict, spark) -> None:
    """Replaces recommendations(ds) with list-restricted ones, and restores the default lists."""
    try:
        check_per_user_candidate_lists(world, spark)
    finally:
        restore_default_lists(world, spark)


def check_per_user_candidate_lists(world: dict, spark) -> None:
    import pyarrow as pa

    from pipelines.tables.schemas import USER_CANDIDATES

    store = world["store"]
    rng = np.random.default_rng(3)
    known = load_checkpoint(world["ckpt"]).vocab.item_ids
    histories = DeltaTable(str(store.uri("user_histories"))).to_pandas()
    warm = histories[histories.n > 0].user_id.to_numpy()[:40]
    lists = {int(u): [int(x) for x in rng.choice(known, size=12, replace=False)] + [999_999] for u in warm}
    lists[int(warm[0])] = [999_999]  # nothing scorable: that user gets no row, and the gate allows it
    store.write_arrow(pa.table({"ds": [DS] * len(lists), "user_id": list(lists), "item_ids": list(lists.values())},
                               schema=USER_CANDIDATES.schema),
                      WriteRequest(USER_CANDIDATES, "overwrite", "retrieval", partition={"ds": DS}))
    ctx = RunContext.open(spark, store, DS, "run-lists", str(world["ckpt"]))
    cfg = ScoringConfig(str(world["ckpt"]), ctx.model_version, top_k=K, per_user_candidates=True)
    result = score_topk(ctx, cfg)
    assert result.metrics["users_with_own_candidates"] == len(lists)
    assert result.metrics["quality"]["users_without_eligible_candidates"] == 1
    got = written(world)
    full = reference(world)
    for user, items in lists.items():
        mine = got[got.user_id == user]
        seen = set(histories.set_index("user_id").seen_item_ids[user])
        allowed = set(items) & set(known) - seen
        assert set(mine.item_id) <= allowed
        assert len(mine) == min(K, len(allowed))
    others = got[~got.user_id.isin(list(lists)) & (got.source == "model")].reset_index(drop=True)
    expected = full[~full.user_id.isin(list(lists))].reset_index(drop=True)
    pd.testing.assert_frame_equal(others[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]],
                                  check_dtype=False)


def test_seen_items_are_kept_when_not_excluded(world: dict, spark) -> None:
    """--include-seen: tasks reading user_links' files get no seen lists and score every candidate."""
    ctx = RunContext.open(spark, world["store"], DS, "run-include-seen", str(world["ckpt"]))
    cfg = ScoringConfig(str(world["ckpt"]), ctx.model_version, top_k=K, exclude_seen=False)
    try:
        result = score_topk(ctx, cfg)
        assert result.metrics["scoring_input"] == "link_files"
        got = written(world)
        model_rows = got[got.source == "model"].reset_index(drop=True)
        expected = reference(world, exclude_seen=False)
        pd.testing.assert_frame_equal(model_rows[["user_id", "rank", "item_id"]],
                                      expected[["user_id", "rank", "item_id"]], check_dtype=False)
        histories = DeltaTable(str(world["store"].uri("user_histories"))).to_pandas()
        seen = {(u, int(i)) for u, items in zip(histories.user_id, histories.item_ids, strict=True) for i in items}
        assert any((u, i) in seen for u, i in zip(model_rows.user_id, model_rows.item_id, strict=True))
    finally:
        restore_default_lists(world, spark)
