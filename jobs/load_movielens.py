"""``lime-rank load-movielens``: MovieLens-100K as ``events`` + ``items`` tables.

The data is fetched at run time from the ``recbole==1.2.1`` wheel (pip download),
verified by sha256 and cached; it is never committed (its terms forbid redistribution).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import add_lakehouse_arg, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank load-movielens", description=__doc__)
    add_lakehouse_arg(parser)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="download cache (default $LIME_RANK_CACHE or ~/.cache/lime-rank)")
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tools.input_tables import write_movielens

    args = build_parser().parse_args(argv)
    # 100k rows: written from the driver through delta-rs, no Spark session needed
    result = write_movielens(DeltaRsStore(None, args.lakehouse), args.cache_dir)
    print(f"events: {result.events.rows} rows; items: {result.items.rows} rows; "
          f"days {result.first_day} .. {result.last_day}; run the nightly job with --ds {result.last_day}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
