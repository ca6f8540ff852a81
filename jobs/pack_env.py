"""``lime-rank pack-env``: pack the Python environment Spark executors need into one archive.

The archive holds the runtime distributions of the venv (torch, numpy, pyarrow, pandas, deltalake...;
not pyspark, which each worker's Spark provides, nor Airflow) and the project packages lime_model,
pipelines and jobs.  Ship it with spark-submit (or a lime-rank command's --spark-conf):

    --conf spark.archives=/abs/path/lime-rank-env.tar.gz#environment
    --conf spark.pyspark.python=./environment/bin/python

Every worker needs the venv's base Python at the same path (the archive links to it; see
lime_rank_env.json in the archive).  Use .tar.gz (smallest to ship) or .zip (stored: cheapest for
Spark to unpack) for spark.archives: Spark cannot run Python from a .tar it unpacks (symlinks
refused, executable bits dropped); a .tar is for unpacking yourself.

    lime-rank pack-env --out PATH.tar.gz|PATH.zip [--prefix VENV] [--force] [--compress-level 1]
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank pack-env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True,
                        help="archive to write: .tar.gz, .tgz or .zip (for spark.archives), or .tar (uncompressed)")
    parser.add_argument("--prefix", default=sys.prefix,
                        help="the venv to pack (default: this interpreter's, %(default)s); same Python version")
    parser.add_argument("--force", action="store_true", help="replace an existing archive")
    parser.add_argument("--compress-level", type=int, choices=range(10), default=1, metavar="0-9",
                        help="gzip level (default 1: several times faster than 9 for ~15%% more bytes)")
    return parser


def _main(argv: list[str] | None) -> int:
    from pathlib import Path

    from pipelines.deploy.pack_env import SPARK_FORMATS, archive_compression, pack_environment, spark_settings

    args = build_parser().parse_args(argv)
    result = pack_environment(Path(args.out), prefix=Path(args.prefix), force=args.force,
                              compress_level=args.compress_level)
    print(f"packed {len(result.distributions)} distributions and the project into {result.path}")
    print(f"  {result.bytes / 1e6:.0f} MB, {result.files} files, {result.seconds:.1f} s")
    if archive_compression(result.path) in SPARK_FORMATS:
        print("spark-submit settings (lime-rank commands: --spark-conf KEY=VALUE):")
        for key, value in spark_settings(result.path).items():
            print(f"  --conf {key}={value}")
    else:
        print("a .tar is not for spark.archives (Spark's Java untar refuses its python links); unpack it at "
              "the same DIR on every host and set:")
        print(f"  tar -xf {result.path} -C DIR")
        print("  --conf spark.pyspark.python=DIR/bin/python")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
