"""``lime-rank generate``: a seeded synthetic ``events`` + ``items`` lakehouse."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from jobs.common import add_lakehouse_arg, add_spark_args, positive_int, run_main, spark_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank generate", description=__doc__)
    add_lakehouse_arg(parser)
    parser.add_argument("--users", type=positive_int, required=True, help="number of users (1k to 10M)")
    parser.add_argument("--items", type=positive_int, required=True, help="catalogue size")
    parser.add_argument("--days", type=positive_int, default=30, help="days of events (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1),
                        help="first event day, YYYY-MM-DD (default 2024-01-01)")
    parser.add_argument("--events-per-user", type=float, default=30.0, help="mean events per user")
    add_spark_args(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.tables import open_lakehouse
    from pipelines.tables.store import count_text
    from pipelines.tools.input_tables import write_synthetic
    from pipelines.tools.synthetic_data import SyntheticConfig

    args = build_parser().parse_args(argv)
    cfg = SyntheticConfig(users=args.users, items=args.items, days=args.days, seed=args.seed,
                          start=args.start, mean_events_per_user=args.events_per_user)
    spark = spark_from_args(args, "lime-rank generate")
    store = open_lakehouse(spark, args.lakehouse)
    result = write_synthetic(spark, store, cfg)
    print(f"events: {count_text(result.events.rows)} rows (table version {result.events.version}); "
          f"items: {count_text(result.items.rows)} rows; days {result.first_day} .. {result.last_day}; "
          f"run the nightly job with --ds {result.last_day}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
