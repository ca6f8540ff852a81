"""``lime-rank run``: the four nightly jobs in order, in one Spark session, without Airflow.

    lime-rank run --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT [--top-k 10]
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_full_arg, add_run_args, add_spark_args, open_run, positive_int, report_stage, run_main
from jobs.score_topk import add_scoring_args, scoring_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--max-history", type=positive_int, default=200)
    parser.add_argument("--allow-empty-ds", action="store_true",
                        help="accept a ds without any event (default: refuse, the upstream day may be missing)")
    parser.add_argument("--inference-device", choices=("auto", "cpu", "cuda"), default="auto")
    add_scoring_args(parser)
    add_full_arg(parser)
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.stages.extract_histories import extract_histories
    from pipelines.stages.history_transforms import HistoryConfig
    from pipelines.stages.infer_user_links import infer_user_links
    from pipelines.stages.precompute_candidates import catalogue_size, precompute_candidates
    from pipelines.stages.score_topk import score_topk
    from pipelines.stages.scoring_plan import check_top_k

    args = build_parser().parse_args(argv)
    HistoryConfig(ds=args.ds, max_history=args.max_history)
    ctx = open_run(args, "lime-rank run")
    scoring = scoring_config(args, ctx.checkpoint_path, ctx.model_version)
    # before stage 1, not after three committed stages
    check_top_k(scoring.top_k, catalogue_size(ctx), "of table 'items' known to the model")
    report_stage(extract_histories(ctx, args.max_history, allow_empty_ds=args.allow_empty_ds, full=args.full))
    report_stage(precompute_candidates(ctx, args.inference_device))
    report_stage(infer_user_links(ctx, InferenceConfig(
        checkpoint=ctx.checkpoint_path, model_version=ctx.model_version, device=args.inference_device),
        full=args.full))
    report_stage(score_topk(ctx, scoring, full=args.full))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
