"""Shared argv plumbing for the thin job entry points (the only place argv is parsed)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


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
    from pipelines.spark import SparkSettings, build_spark_session

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


def run_main(main_body, argv: list[str] | None) -> int:  # noqa: ANN001
    """Run a job body, turning product errors into one clear log line and exit code 1."""
    from lime_model.errors import LimeRankError

    configure_logging()
    try:
        return int(main_body(argv) or 0)
    except LimeRankError as exc:
        logging.getLogger("lime-rank").error("%s: %s", type(exc).__name__, exc)
        return 1
