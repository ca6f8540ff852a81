"""score_topk's plan (pure): sizes and capabilities in, the plan out."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.errors import ConfigError, TopKTooLargeError
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.scoring_plan import ScoringSizes, check_top_k, plan_mode, plan_scoring


def test_plan_mode_respects_the_memory_bound() -> None:
    cfg = ScoringConfig("c", "v", top_k=5, broadcast_max_bytes=1000)
    assert plan_mode(cfg, 999) == ("broadcast", 1)
    assert plan_mode(cfg, 3500) == ("sharded", 4)
    assert plan_mode(ScoringConfig("c", "v", top_k=5, candidate_mode="sharded", shards=2), 10) == ("sharded", 2)
    with pytest.raises(ConfigError, match="seen_broadcast_max_bytes must be >= 0"):
        ScoringConfig("c", "v", top_k=5, seen_broadcast_max_bytes=-1)
    with pytest.raises(ConfigError, match="candidate mode"):
        ScoringConfig("c", "v", top_k=5, candidate_mode="fast")
    with pytest.raises(ConfigError, match="top_k"):
        ScoringConfig("c", "v", top_k=0)


def test_k_larger_than_catalogue_is_refused() -> None:
    with pytest.raises(TopKTooLargeError, match="top_k=11 exceeds the 10 candidate"):
        check_top_k(11, 10)


def _sizes(**overrides: int) -> ScoringSizes:
    kw = {"users": 1000, "largest_seen": 50, "candidates": 5000, "candidate_row_bytes": 300, "link_files": 4,
          "cores": 2}
    kw.update(overrides)
    return ScoringSizes(**kw)


def test_scoring_plan_reads_link_files_only_with_broadcast_seen_lists_and_a_file_per_core() -> None:
    cfg = ScoringConfig("ckpt", "v1", top_k=10)
    plan = plan_scoring(cfg, _sizes())
    assert plan.audit() == {"candidate_mode": "broadcast", "shards": 1, "seen_join": "broadcast",
                            "scoring_input": "link_files", "scoring_partitions": 4}
    assert plan_scoring(cfg, _sizes(link_files=1)).scoring_input == "spark_join"  # fewer files than cores
    per_user = plan_scoring(dataclasses.replace(cfg, per_user_candidates=True), _sizes())
    assert (per_user.scoring_input, per_user.scoring_partitions) == ("spark_join", 4)


def test_scoring_plan_shuffles_seen_lists_sized_by_the_largest_seen_set() -> None:
    cfg = ScoringConfig("ckpt", "v1", top_k=10, seen_broadcast_max_bytes=1000 * (8 * 50 + 24))
    assert plan_scoring(cfg, _sizes(largest_seen=50)).seen_join == "broadcast"
    shuffled = plan_scoring(cfg, _sizes(largest_seen=51))
    assert (shuffled.seen_join, shuffled.scoring_input) == ("shuffle", "spark_join")


def test_an_incremental_plan_sizes_the_seen_lists_by_the_users_it_scores() -> None:
    cfg = ScoringConfig("ckpt", "v1", top_k=10, seen_broadcast_max_bytes=100 * (8 * 50 + 24))
    assert plan_scoring(cfg, _sizes()).seen_join == "shuffle"  # 1000 users' lists
    plan = plan_scoring(cfg, _sizes(scored_users=100))  # the other 900 users' lists are copied
    assert (plan.seen_join, plan.scoring_input) == ("broadcast", "link_files")
    assert plan_scoring(cfg, _sizes(scored_users=101)).seen_join == "shuffle"


def test_scoring_plan_shards_a_candidate_matrix_above_the_broadcast_bound() -> None:
    cfg = ScoringConfig("ckpt", "v1", top_k=10, broadcast_max_bytes=1_000_000)
    plan = plan_scoring(cfg, _sizes(candidates=10_000, candidate_row_bytes=250))  # 2.5 MB
    assert (plan.candidate_mode, plan.shards) == ("sharded", 3)
