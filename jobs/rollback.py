"""``lime-rank rollback``: make one ds partition hold again what it held at an earlier table version.

One new commit re-adds the data files of that version's partition (no data is
rewritten; other ds partitions are left as they are now).  Find the version with
``DeltaTable(uri).history()`` or the run_audit table (``table_version`` of the
last good run).  Fails with MissingDataFileError if those files were vacuumed, with
UnsupportedTableFeatureError on a table with deletion vectors or column mapping, and with
UnsupportedOnEngineError when $LIME_RANK_TABLE_ENGINE=delta-spark.

    lime-rank rollback --lakehouse DIR --table recommendations --ds 2024-01-30 --to-version 41
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import add_lakehouse_arg, parse_ds, run_main

ROLLBACK_TABLES = ("user_histories", "user_links", "recommendations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank rollback", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lakehouse_arg(parser)
    parser.add_argument("--table", required=True, choices=ROLLBACK_TABLES)
    parser.add_argument("--ds", type=parse_ds, required=True, help="the partition to roll back")
    parser.add_argument("--to-version", type=int, required=True, help="table version whose partition to restore")
    return parser


def _main(argv: list[str] | None) -> int:
    from pipelines.tables.audit import AuditRecord, append_audit, new_run_id
    from pipelines.tables.maintenance import rollback_partition, rollback_store
    from pipelines.tables.schemas import ALL_TABLES
    from pipelines.tables.store import check_lakehouse_root

    args = build_parser().parse_args(argv)
    store = rollback_store(args.lakehouse)
    check_lakehouse_root(store.root)
    result = rollback_partition(store, ALL_TABLES[args.table], {"ds": args.ds}, args.to_version)
    record = AuditRecord(job=f"rollback:{args.table}", ds=args.ds, run_id=new_run_id(), table_version=result.version,
                         metrics={"rollback_to_version": args.to_version, "rows": result.rows})
    append_audit(store, record)
    print(f"{args.table} ds={args.ds}: now holds version {args.to_version}'s {result.rows} row(s) "
          f"(committed as version {result.version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
