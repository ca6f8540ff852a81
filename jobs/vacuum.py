"""``lime-rank vacuum``: list (default) or delete data files that no table version references.

Dry run unless --delete.  Orphans come from task attempts that died, drivers killed
before their commit and writers that lost a race; files removed by versions older
than the retention go too (time travel to those versions ends).  Never use a
retention shorter than the longest-running writer: its files are not committed yet.

    lime-rank vacuum --lakehouse DIR [--table recommendations ...] [--retention-hours 168] [--delete]
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_lakehouse_arg, run_main


def build_parser() -> argparse.ArgumentParser:
    from pipelines.tables.maintenance import MIN_RETENTION_HOURS

    parser = argparse.ArgumentParser(prog="lime-rank vacuum", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lakehouse_arg(parser)
    parser.add_argument("--table", action="append", default=[],
                        help="table to vacuum (repeatable; default: every Delta table of the lakehouse)")
    parser.add_argument("--retention-hours", type=int, default=MIN_RETENTION_HOURS,
                        help=f"keep unreferenced files younger than this (default {MIN_RETENTION_HOURS})")
    parser.add_argument("--delete", action="store_true", help="delete the files (default: only list them)")
    parser.add_argument("--allow-short-retention", action="store_true",
                        help=f"accept a retention under {MIN_RETENTION_HOURS} h (only while no job writes)")
    return parser


def _main(argv: list[str] | None) -> int:
    from pathlib import Path

    from deltalake import DeltaTable

    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tables.maintenance import vacuum_table
    from pipelines.tables.store import check_lakehouse_root

    args = build_parser().parse_args(argv)
    store = DeltaRsStore(None, args.lakehouse)
    check_lakehouse_root(store.root)
    tables = args.table or sorted(p.name for p in Path(store.root).iterdir()
                                  if p.is_dir() and DeltaTable.is_deltatable(str(p)))
    for table in tables:
        result = vacuum_table(store, table, retention_hours=args.retention_hours, delete=args.delete,
                              allow_short_retention=args.allow_short_retention)
        verb = "deleted" if result.deleted else "would delete (dry run)"
        print(f"{table}: {verb} {len(result.files)} file(s)")
        for path in result.files:
            print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
