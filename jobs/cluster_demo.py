"""``lime-rank cluster-demo`` (``make cluster-demo``): the DAGs under a running Airflow scheduler,
the jobs on a Spark standalone cluster (a master and two workers with fake GPUs) with the
executors' Python shipped as a packed environment, all on 127.0.0.1; see docs/deploy.md.

Writes ``<out>/summary.json`` and stops every process it started, also on failure and Ctrl-C.

    lime-rank cluster-demo [--out demo/cluster] [--users 2000] [--items 500] [--days 10] [--archive ENV.zip]
                           [--backfill-conf JSON] [--kill-worker-in-backfill]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.common import positive_int, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank cluster-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo/cluster"),
                        help="folder of the demo (emptied first): lakehouse, logs, summary.json")
    parser.add_argument("--users", type=positive_int, default=2000)
    parser.add_argument("--items", type=positive_int, default=500)
    parser.add_argument("--days", type=positive_int, default=10, help="days of events (at least 3)")
    parser.add_argument("--archive", type=Path, default=None,
                        help="packed executor environment to reuse (default: lime-rank pack-env into --out)")
    parser.add_argument("--backfill-conf", type=json.loads, default={}, metavar="JSON",
                        help='Params of the backfill runs, e.g. \'{"top_k": 3}\' (default: the DAG\'s)')
    parser.add_argument("--kill-worker-in-backfill", action="store_true",
                        help="SIGKILL a worker during the first backfill run's inference (a node failure)")
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.deploy.cluster_demo import DemoConfig, run_cluster_demo

    args = build_parser().parse_args(argv)
    if args.days < 3:
        build_parser().error("--days must be at least 3 (the backfill covers the two days before the last)")
    if not isinstance(args.backfill_conf, dict):
        build_parser().error(f"--backfill-conf must be a JSON object, got {args.backfill_conf!r}")
    out = args.out.resolve()
    run_cluster_demo(DemoConfig(out=out, users=args.users, items=args.items, days=args.days,
                                archive=args.archive.resolve() if args.archive else None,
                                kill_worker_in_backfill=args.kill_worker_in_backfill,
                                backfill_conf=args.backfill_conf))
    print(f"summary: {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
