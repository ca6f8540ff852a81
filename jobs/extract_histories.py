"""extract_histories: events up to the end of --ds -> user_histories(ds).

    spark-submit jobs/extract_histories.py --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT [--max-history 200]
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_full_arg, add_run_args, add_spark_args, open_run, positive_int, report_stage, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank extract-histories", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--max-history", type=positive_int, default=200,
                        help="keep the last N events per user (default 200)")
    parser.add_argument("--allow-empty-ds", action="store_true",
                        help="accept a ds without any event (default: refuse, the upstream day may be missing)")
    add_full_arg(parser)
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.stages.extract_histories import extract_histories
    from pipelines.stages.history_transforms import HistoryConfig

    args = build_parser().parse_args(argv)
    HistoryConfig(ds=args.ds, max_history=args.max_history)  # validate before starting Spark
    ctx = open_run(args, "lime-rank extract_histories")
    report_stage(extract_histories(ctx, args.max_history, allow_empty_ds=args.allow_empty_ds, full=args.full))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
