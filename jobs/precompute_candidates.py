"""precompute_candidates: items + checkpoint -> candidate_link_weights(model_version).

Skipped when the table already holds this model version built from the current
catalogue version; with the delta-rs engine that is decided from the table logs before a
Spark session (and its executors) starts.

    spark-submit jobs/precompute_candidates.py --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from jobs.common import add_run_args, add_spark_args, checkpoint_path, open_run, report_stage, run_main

if TYPE_CHECKING:
    from pipelines.stages.context import StageResult

log = logging.getLogger("lime-rank")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank precompute-candidates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--inference-device", choices=("auto", "cpu", "cuda"), default="auto")
    add_spark_args(parser)
    return parser


def _skip_without_spark(args: argparse.Namespace) -> StageResult | None:
    """The skipped stage when the candidates are current, found from the table logs before a Spark
    session starts (no executors, no unpacked environment); None when they must be built, or when
    the table engine needs a session (delta-spark) or a new JVM to be known."""
    from pipelines.stages.context import checked_run_inputs
    from pipelines.stages.precompute_candidates import skip_if_current
    from pipelines.tables import engine_without_session
    from pipelines.tables.audit import new_run_id
    from pipelines.tables.delta_rs import DeltaRsStore

    if engine_without_session() != "delta-rs":
        return None
    store = DeltaRsStore(None, args.lakehouse)
    checkpoint = checked_run_inputs(store, args.ds, checkpoint_path(args.checkpoint))
    result = skip_if_current(store, args.ds, args.run_id or new_run_id(), checkpoint.model_version)
    if result is not None:
        log.info("candidates are current: skipped without starting a Spark session")
    return result


def _main(argv: list[str] | None) -> int:
    from pipelines.stages.precompute_candidates import precompute_candidates

    args = build_parser().parse_args(argv)
    result = _skip_without_spark(args)
    if result is None:
        ctx = open_run(args, "lime-rank precompute_candidates")
        result = precompute_candidates(ctx, args.inference_device)
    report_stage(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
