"""validate_publish: gate the committed recommendations(ds), write the run report, publish.

    spark-submit jobs/validate_publish.py --lakehouse DIR --ds 2024-01-30 --top-k 10 --run-id RID

A failed gate exits 1 (QualityGateError) and publishes nothing; the checks, the report and the
retry rule are the stage's (:mod:`pipelines.stages.validate_publish`).
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_run_args, add_spark_args, positive_int, run_main, spark_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank validate-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, checkpoint=False)
    parser.add_argument("--top-k", type=positive_int, default=10, help="K the run scored (default 10)")
    parser.add_argument("--include-seen", action="store_true",
                        help="the run did not exclude seen items (changes the expected rows per user)")
    parser.add_argument("--user-candidates", action="store_true",
                        help="the run ranked per-user lists from user_candidates(ds) (ditto)")
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.stages.validate_publish import PublishConfig, validate_publish
    from pipelines.tables import open_lakehouse
    from pipelines.tables.audit import new_run_id

    args = build_parser().parse_args(argv)
    cfg = PublishConfig(ds=args.ds, run_id=args.run_id or new_run_id(), top_k=args.top_k,
                        exclude_seen=not args.include_seen, user_candidates=args.user_candidates)
    spark = spark_from_args(args, "lime-rank validate_publish")
    validate_publish(open_lakehouse(spark, args.lakehouse), cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
