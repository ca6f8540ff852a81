"""Run infer_user_links on ``local-cluster[2,1,1024]``, with fake GPUs when ``--gpu-script`` is given
(a separate process: one SparkContext per process).  Writes the task records as JSON to ``--out``.
``$LIME_RANK_FAULT`` (pipelines/faults.py) is passed on to the executors."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--lakehouse", "--ds", "--checkpoint", "--run-id", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--gpu-script", default=None, help="fake GPU discovery script (default: no GPUs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)

    import os

    from pipelines.faults import FAULT_ENV
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.runtime.spark_session import GpuSettings, SparkSettings, build_spark_session
    from pipelines.stages.context import RunContext
    from pipelines.stages.infer_user_links import infer_user_links
    from pipelines.tables.audit import read_audit
    from pipelines.tables.delta_rs import DeltaRsStore

    fault = {f"spark.executorEnv.{FAULT_ENV}": os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    spark = build_spark_session(SparkSettings(
        master="local-cluster[2,1,1024]", app_name="lime-rank-cluster-test", shuffle_partitions=4,
        gpu=GpuSettings(args.gpu_script, amount_per_executor=1, amount_per_task=1.0) if args.gpu_script else None,
        conf=fault,
    ))
    try:
        store = DeltaRsStore(spark, args.lakehouse)
        ctx = RunContext.open(spark, store, args.ds, args.run_id, args.checkpoint)
        cfg = InferenceConfig(args.checkpoint, ctx.model_version, device=args.device, partitions=args.partitions)
        result = infer_user_links(ctx, cfg)
        audit = [r for r in read_audit(store, args.ds) if r["run_id"] == args.run_id and r["job"] == "infer_user_links"]
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        with open(args.out, "w") as fh:
            json.dump({"version": result.commit.version if result.commit else None,
                       "metrics": audit[-1]["metrics"], "executors": executors}, fh)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
