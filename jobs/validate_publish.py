"""validate_publish: gate the committed recommendations(ds), write the run report, publish.

    spark-submit jobs/validate_publish.py --lakehouse DIR --ds 2024-01-30 --top-k 10 --run-id RID

1. re-checks the committed ``recommendations(ds)`` with :mod:`pipelines.quality`
   (K rows per user, fewer only when fewer are eligible, ranks 1..K, finite scores, one model_version across
   ``user_links``, ``candidate_link_weights`` and ``recommendations``, no user lost
   since ``user_histories(ds)``);
2. writes the HTML run report to ``<lakehouse>/_reports/ds=<ds>/run_report.html``
   (temporary file + rename) and logs ``run report: <path>``, pass or fail;
3. only if every check passed, appends the ``published`` row to ``run_audit``.
   A failed gate exits 1 (QualityGateError): the Airflow task fails and the
   recommendations Asset is not updated.

A retry of the same run (same ``--run-id``) that already published the same table
version does nothing more.  The model version checked is the one score_topk
recorded for this run in ``run_audit`` (else the latest score_topk of ds).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.common import add_run_args, add_spark_args, positive_int, run_main, spark_from_args

if TYPE_CHECKING:
    from pipelines.quality import QualityReport
    from pipelines.tables.audit import AuditRecord
    from pipelines.tables.store import TableStore

log = logging.getLogger("jobs.validate_publish")

JOB = "validate_publish"
REPORTS_DIR = "_reports"
REPORT_FILE = "run_report.html"


@dataclass(frozen=True)
class PublishConfig:
    ds: str
    run_id: str
    top_k: int
    exclude_seen: bool
    user_candidates: bool = False

    def __post_init__(self) -> None:
        from pipelines.errors import ConfigError

        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not self.run_id:
            raise ConfigError("run_id must not be empty")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank validate-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, checkpoint=False)
    parser.add_argument("--top-k", type=positive_int, default=10, help="K the run scored (default 10)")
    parser.add_argument("--include-seen", action="store_true",
                        help="the run did not exclude seen items (changes the expected rows per user)")
    parser.add_argument("--user-candidates", action="store_true",
                        help="the run ranked per-user lists from user_candidates(ds) (ditto)")
    add_spark_args(parser)
    return parser


def report_location(root: str, ds: str) -> str:
    """``<root>/_reports/ds=<ds>/run_report.html`` (a path, or a URI when root is one)."""
    return f"{root.rstrip('/')}/{REPORTS_DIR}/ds={ds}/{REPORT_FILE}"


def write_report(root: str, ds: str, text: str) -> str:
    """Write the report atomically (temporary file in the same folder, then rename)."""
    import pyarrow.fs as pafs

    target = report_location(root, ds)
    fs, path = pafs.FileSystem.from_uri(target) if "://" in target else (pafs.LocalFileSystem(), target)
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{REPORT_FILE}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(text.encode("utf-8"))
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    return target


def run_model_version(audit_rows: list[dict[str, object]], run_id: str, recs_versions: list[str]) -> str:
    """The model version this run scored with (audit of score_topk), else the only one in the rows."""
    from pipelines.errors import ModelVersionMismatchError
    from pipelines.tables.audit import latest_success

    scored = latest_success(audit_rows, "score_topk", run_id) or latest_success(audit_rows, "score_topk")
    if scored is not None and scored.get("model_version"):
        return str(scored["model_version"])
    if len(recs_versions) == 1:
        return recs_versions[0]
    raise ModelVersionMismatchError(
        f"recommendations hold model versions {recs_versions} and run_audit names none for this run"
    )


def _already_published(audit_rows: list[dict[str, object]], cfg: PublishConfig, version: int) -> bool:
    from pipelines.tables.audit import STATUS_PUBLISHED

    return any(r["job"] == JOB and r["run_id"] == cfg.run_id and r["status"] == STATUS_PUBLISHED
               and r["table_version"] == version for r in audit_rows)


def validate_and_report(store: TableStore, cfg: PublishConfig, record: AuditRecord) -> QualityReport:
    """Check recommendations(ds), write the report; the caller publishes if it passed."""
    from pyspark.sql import functions as F

    from pipelines import report as rpt
    from pipelines.errors import PartitionNotFoundError
    from pipelines.quality import Check, QualityReport, check_recommendations
    from pipelines.tables.audit import read_audit
    from pipelines.tables.schemas import (
        CANDIDATE_LINK_WEIGHTS,
        RECOMMENDATIONS,
        USER_CANDIDATES,
        USER_HISTORIES,
        USER_LINKS,
    )

    part = {"ds": cfg.ds}
    version = store.version(RECOMMENDATIONS)
    if version is None or store.partition_rows(RECOMMENDATIONS, part) == 0:
        raise PartitionNotFoundError("recommendations", part, hint=f"; run score-topk for ds={cfg.ds} first")
    if store.partition_rows(USER_HISTORIES, part) == 0:
        raise PartitionNotFoundError("user_histories", part,
                                     hint=f"; run extract-histories for ds={cfg.ds} first")
    if cfg.user_candidates and store.partition_rows(USER_CANDIDATES, part) == 0:
        raise PartitionNotFoundError("user_candidates", part, hint=" but the run was told to rank them")
    recs = store.read(RECOMMENDATIONS, version=version, partition=part).persist()
    try:
        histories = store.read(USER_HISTORIES, partition=part)
        links = store.read(USER_LINKS, partition=part) if store.exists(USER_LINKS) else None
        own_lists = (store.read(USER_CANDIDATES, partition=part).select("user_id", "item_ids")
                     if cfg.user_candidates else None)
        audit_rows = read_audit(store, cfg.ds)
        versions = sorted(r.model_version for r in recs.select("model_version").distinct().collect())
        model_version = run_model_version(audit_rows, cfg.run_id, versions)
        record.model_version, record.table_version = model_version, version
        mv_part = {"model_version": model_version}
        candidates = store.partition_rows(CANDIDATE_LINK_WEIGHTS, mv_part)
        if candidates:
            candidate_ids = store.read(CANDIDATE_LINK_WEIGHTS, partition=mv_part).select("item_id")
        else:
            candidate_ids = recs.sparkSession.range(0).select(F.col("id").alias("item_id"))
        gate = check_recommendations(recs, histories, candidate_ids, ds=cfg.ds, top_k=cfg.top_k,
                                     model_version=model_version, exclude_seen=cfg.exclude_seen,
                                     user_links=links, user_candidates=own_lists)
        gate = QualityReport(gate.table, gate.ds, [*gate.checks, Check(
            "candidate_link_weights", candidates > 0,
            f"{candidates} candidate row(s) for model_version {model_version}")], gate.stats)
        agg = rpt.collect_aggregates(recs, histories, store.read_table("items"))
    finally:
        recs.unpersist()
    record.metrics["quality"] = gate.summary()
    record.count("rows_checked", gate.stats.get("rows", 0))
    data = rpt.ReportData(
        ds=cfg.ds, run_id=cfg.run_id, top_k=cfg.top_k, model_version=model_version, passed=gate.passed,
        checks=gate.checks, sources=agg.sources, scores=agg.scores, item_counts=agg.item_counts,
        catalogue_ids=agg.catalogue_ids, popularity=agg.popularity,
        stages=rpt.stages_from_audit([*audit_rows, _provisional(record)], cfg.run_id),
    )
    coverage = rpt.catalogue_coverage(agg.item_counts, agg.catalogue_ids)
    record.metrics["catalogue_coverage"] = round(coverage.share, 6)
    path = write_report(store.root, cfg.ds, rpt.render_report(data))
    record.metrics["report"] = path
    log.info("run report: %s", path)
    return gate


def _provisional(record: AuditRecord) -> dict[str, object]:
    """This job's own row as the report shows it (its audit row is appended after the report)."""
    import datetime as dt

    return {"job": record.job, "run_id": record.run_id, "status": "running", "started_at": record.started_at,
            "finished_at": dt.datetime.now(dt.UTC), "metrics": {}}


def _main(argv: list[str] | None) -> int:
    from pipelines.tables import open_lakehouse
    from pipelines.tables.audit import STATUS_PUBLISHED, STATUS_SKIPPED, audited, new_run_id, read_audit
    from pipelines.tables.schemas import RECOMMENDATIONS

    args = build_parser().parse_args(argv)
    cfg = PublishConfig(ds=args.ds, run_id=args.run_id or new_run_id(), top_k=args.top_k,
                        exclude_seen=not args.include_seen, user_candidates=args.user_candidates)
    spark = spark_from_args(args, "lime-rank validate_publish")
    store = open_lakehouse(spark, args.lakehouse)
    with audited(store, JOB, cfg.ds, cfg.run_id) as record:
        version = store.version(RECOMMENDATIONS)
        if version is not None and _already_published(read_audit(store, cfg.ds), cfg, version):
            record.status = STATUS_SKIPPED
            record.metrics["skipped_reason"] = f"run {cfg.run_id} already published version {version}"
            log.info("recommendations(ds=%s) version %d already published by run %s; run report: %s",
                     cfg.ds, version, cfg.run_id, report_location(store.root, cfg.ds))
            return 0
        gate = validate_and_report(store, cfg, record)
        gate.raise_if_failed()
        record.status = STATUS_PUBLISHED
    log.info("published recommendations(ds=%s) version %s of model %s", cfg.ds, record.table_version,
             record.model_version)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
