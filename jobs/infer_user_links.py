"""infer_user_links: user_histories(ds) -> user_links(ds), GPU-partitioned LIME-XOR inference.

Each task uses the GPU Spark assigned to it (spark.task.resource.gpu.amount),
else the CPU with bounded threads.

    spark-submit jobs/infer_user_links.py --lakehouse DIR --ds 2024-01-30 --checkpoint CKPT
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_full_arg, add_run_args, add_spark_args, open_run, positive_int, report_stage, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank infer-user-links", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    parser.add_argument("--inference-device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU Spark assigned, else CPU; cpu: always CPU; cuda: require a GPU")
    parser.add_argument("--batch-tokens", type=positive_int, default=65536,
                        help="max padded tokens per inference batch")
    parser.add_argument("--partitions", type=positive_int, default=None,
                        help="inference partitions (default: spark.default.parallelism)")
    add_full_arg(parser)
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.stages.infer_user_links import infer_user_links

    args = build_parser().parse_args(argv)
    ctx = open_run(args, "lime-rank infer_user_links")
    cfg = InferenceConfig(checkpoint=ctx.checkpoint_path, model_version=ctx.model_version,
                          device=args.inference_device, max_tokens_per_batch=args.batch_tokens,
                          partitions=args.partitions)
    report_stage(infer_user_links(ctx, cfg, full=args.full))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
