"""How score_topk runs, decided before any Spark job: sizes and capabilities in, a plan out
(candidate mode and shards, seen-list join, scoring input, partitions).  Pure: unit-tested
without Spark, and recorded whole in the audit row."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pipelines.errors import TopKTooLargeError
from pipelines.runtime.scoring_task import ScoringConfig


@dataclass(frozen=True)
class ScoringSizes:
    """What score_topk measures before it decides anything (no Spark job needed for any of it)."""

    users: int  # rows of user_histories(ds)
    largest_seen: int  # the largest seen set (user_histories.n_seen) in the partition
    candidates: int  # rows of candidate_link_weights(model_version)
    candidate_row_bytes: int  # one candidate's link weights, vector and bias as stored
    link_files: int  # user_links(ds) files the scoring tasks can read themselves (0: none)
    cores: int  # Spark's default parallelism
    scored_users: int | None = None  # users whose seen lists scoring needs (incremental: the changed ones); None: all

    @property
    def seen_list_users(self) -> int:
        return self.users if self.scored_users is None else self.scored_users


@dataclass(frozen=True)
class ScoringPlan:
    """How score_topk runs; recorded whole in the audit row.

    candidate_mode/shards: the candidate matrix broadcast once, or read in shards by every task.
    seen_join: the seen lists broadcast (small enough) or joined by a shuffle.
    scoring_input: each task reads its own user_links file ("link_files": L_P never becomes Spark
    rows), or users are joined in Spark and repartitioned ("spark_join").
    """

    candidate_mode: str
    shards: int
    seen_join: str
    scoring_input: str
    scoring_partitions: int

    @property
    def seen_broadcast(self) -> bool:
        return self.seen_join == "broadcast"

    @property
    def reads_link_files(self) -> bool:
        return self.scoring_input == "link_files"

    def audit(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def plan_scoring(cfg: ScoringConfig, sizes: ScoringSizes) -> ScoringPlan:
    """Sizes and capabilities in, the plan out (pure).  Tasks read their own user_links files only
    with the seen lists broadcast (those of the users to score: an incremental run broadcasts far
    fewer), no per-user candidate lists, and a file for every core; otherwise users are joined in
    Spark and spread over twice the cores."""
    mode, shards = plan_mode(cfg, sizes.candidates * sizes.candidate_row_bytes)
    seen_broadcast = seen_lists_bytes(sizes.seen_list_users, sizes.largest_seen) <= cfg.seen_broadcast_max_bytes
    direct = seen_broadcast and not cfg.per_user_candidates and sizes.link_files >= sizes.cores
    return ScoringPlan(candidate_mode=mode, shards=shards,
                       seen_join="broadcast" if seen_broadcast else "shuffle",
                       scoring_input="link_files" if direct else "spark_join",
                       scoring_partitions=sizes.link_files if direct else 2 * sizes.cores)


def plan_mode(cfg: ScoringConfig, matrix_bytes: int) -> tuple[str, int]:
    """(mode, shards) for a candidate matrix of ``matrix_bytes``."""
    if cfg.candidate_mode == "broadcast":
        return "broadcast", 1
    if cfg.candidate_mode == "sharded":
        return "sharded", cfg.shards or max(2, math.ceil(matrix_bytes / cfg.broadcast_max_bytes))
    if matrix_bytes <= cfg.broadcast_max_bytes:
        return "broadcast", 1
    return "sharded", cfg.shards or math.ceil(matrix_bytes / cfg.broadcast_max_bytes)


def seen_lists_bytes(users: int, largest_seen: int) -> int:
    """Upper bound of the seen lists' size as an Arrow table: ``users`` lists of at most
    ``largest_seen`` int64 ids (``user_histories.n_seen``), plus the user id and list offset of each."""
    return users * (8 * largest_seen + 24)


def check_top_k(top_k: int, catalogue_size: int, where: str = "in candidate_link_weights") -> None:
    if top_k > catalogue_size:
        raise TopKTooLargeError(
            f"top_k={top_k} exceeds the {catalogue_size} candidate(s) {where}; "
            "lower --top-k or grow the catalogue"
        )
