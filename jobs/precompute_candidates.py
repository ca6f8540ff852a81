"""precompute_candidates: items + checkpoint -> candidate_link_weights(model_version).

Skipped when the table already holds this model version built from the current
catalogue version.

    spark-submit jobs/precompute_candidates.py --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_run_args, add_spark_args, open_run, report_stage, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank precompute-candidates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--inference-device", choices=("auto", "cpu", "cuda"), default="auto")
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.stages.precompute_candidates import precompute_candidates

    args = build_parser().parse_args(argv)
    ctx = open_run(args, "lime-rank precompute_candidates")
    report_stage(precompute_candidates(ctx, args.inference_device))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
