"""score_topk: user_links(ds) x candidate_link_weights(model_version) -> recommendations(ds).

Exact top-K per user; seen items excluded unless --include-seen; users without a
usable history get the popularity list (source='popular').  The quality gate runs
before the commit: a failing gate writes nothing.

    spark-submit jobs/score_topk.py --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT --top-k 10
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from jobs.common import add_full_arg, add_run_args, add_spark_args, open_run, positive_int, report_stage, run_main

if TYPE_CHECKING:
    from pipelines.runtime.scoring_task import ScoringConfig


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=positive_int, default=10, help="recommendations per user (default 10)")
    parser.add_argument("--include-seen", action="store_true",
                        help="do not exclude items the user already interacted with")
    parser.add_argument("--candidate-mode", choices=("auto", "broadcast", "sharded"), default="auto",
                        help="auto: broadcast the candidate matrix while it fits --broadcast-max-mb")
    parser.add_argument("--broadcast-max-mb", type=positive_int, default=512)
    parser.add_argument("--shards", type=positive_int, default=None, help="candidate shards (sharded mode)")
    parser.add_argument("--user-candidates", action="store_true",
                        help="rank each user's own list from the user_candidates(ds) table (users without "
                             "a list are ranked against the whole catalogue)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank score-topk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    add_scoring_args(parser)
    add_full_arg(parser)
    add_spark_args(parser)
    return parser


def scoring_config(args: argparse.Namespace, checkpoint: str, model_version: str) -> ScoringConfig:
    from pipelines.runtime.scoring_task import ScoringConfig

    return ScoringConfig(checkpoint=checkpoint, model_version=model_version, top_k=args.top_k,
                         exclude_seen=not args.include_seen, candidate_mode=args.candidate_mode,
                         broadcast_max_bytes=args.broadcast_max_mb * 1024 * 1024, shards=args.shards,
                         per_user_candidates=args.user_candidates)


def _main(argv: list[str] | None) -> int:
    from pipelines.stages.score_topk import score_topk

    args = build_parser().parse_args(argv)
    ctx = open_run(args, "lime-rank score_topk")
    report_stage(score_topk(ctx, scoring_config(args, ctx.checkpoint_path, ctx.model_version), full=args.full))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
