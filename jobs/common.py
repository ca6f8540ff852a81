"""Shared argv plumbing for the thin job entry points (the only place argv is parsed)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.stages.context import RunContext, StageResult


def configure_logging() -> None:
    level = os.environ.get("LIME_RANK_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("py4j", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_ds(text: str) -> str:
    """``YYYY-MM-DD`` (the run date); anything else is an argparse error naming the value."""
    try:
        return dt.date.fromisoformat(text).isoformat() if len(text) == 10 else _bad_ds(text)
    except ValueError:
        return _bad_ds(text)


def _bad_ds(text: str) -> str:
    raise argparse.ArgumentTypeError(f"--ds must be a date YYYY-MM-DD, got {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_lakehouse_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lakehouse", required=True, help="root folder (or URI) of the lakehouse tables")


def add_spark_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("spark")
    group.add_argument("--master", default=None,
                       help="Spark master (default: spark-submit's, else local[*])")
    group.add_argument("--driver-memory", default=None, help="e.g. 4g (local masters only)")
    group.add_argument("--shuffle-partitions", type=positive_int, default=None)
    group.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                       help="extra Spark configuration (repeatable)")


def spark_from_args(args: argparse.Namespace, app_name: str) -> SparkSession:
    from pipelines.runtime.spark_session import SparkSettings, build_spark_session

    conf: dict[str, str] = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--spark-conf expects KEY=VALUE, got {item!r}")
        conf[key] = value
    settings = SparkSettings(
        master=args.master, app_name=app_name, shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory, conf=conf,
    )
    return build_spark_session(settings)


def run_main(main_body: Callable[[list[str] | None], int | None], argv: list[str] | None) -> int:
    """Run a job body, turning product errors into one clear log line and exit code 1."""
    from lime_model.errors import LimeRankError

    configure_logging()
    try:
        return int(main_body(argv) or 0)
    except LimeRankError as exc:
        logging.getLogger("lime-rank").error("%s: %s", type(exc).__name__, exc)
        return 1


def add_run_args(parser: argparse.ArgumentParser, *, checkpoint: bool = True) -> None:
    """--lakehouse, --ds, --checkpoint, --run-id: what every nightly job takes."""
    add_lakehouse_arg(parser)
    parser.add_argument("--ds", type=parse_ds, required=True, help="run date YYYY-MM-DD (UTC)")
    if checkpoint:
        parser.add_argument("--checkpoint", required=True, help="model checkpoint (path or file:// URI)")
    parser.add_argument("--run-id", default=None,
                        help="id of this logical run (Airflow passes {{ run_id }}); a retry with the same id "
                             "skips a commit that already landed. Default: a fresh id")


def add_full_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help="recompute every user (default: incremental from the previous day when its "
                             "outputs can be reused; the audit row says which ran and why)")


def checkpoint_path(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        raise ConfigError(f"checkpoint {uri!r}: only local paths and file:// URIs are supported")
    return os.path.abspath(uri)


def open_run(args: argparse.Namespace, app_name: str) -> RunContext:
    """Spark session, table store and run context from the common arguments."""
    from pipelines.stages.context import RunContext
    from pipelines.tables import open_lakehouse
    from pipelines.tables.audit import new_run_id

    ckpt = checkpoint_path(args.checkpoint)
    from lime_model.checkpoint import load_checkpoint

    load_checkpoint(ckpt)  # fail on a bad checkpoint before starting a JVM
    spark = spark_from_args(args, app_name)
    store = open_lakehouse(spark, args.lakehouse)
    return RunContext.open(spark, store, args.ds, args.run_id or new_run_id(), ckpt)


def report_stage(result: StageResult) -> None:
    """One line for the operator: what the stage did."""
    from pipelines.tables.store import count_text

    commit = result.commit
    if commit is None or commit.skipped:  # StageResult.skipped, spelled out: below, commit is not None
        print(f"{result.stage} ds={result.ds}: nothing to do ({result.metrics.get('skipped_reason', 'skipped')})")
    else:
        print(f"{result.stage} ds={result.ds}: {count_text(commit.rows)} row(s) committed to {commit.table} "
              f"version {commit.version}")
