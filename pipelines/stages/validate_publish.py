"""The validate_publish stage: gate the committed recommendations(ds), write the run report, publish.

Run by ``jobs/validate_publish.py`` (argv -> :class:`PublishConfig` -> :func:`validate_publish`):

1. re-checks the committed ``recommendations(ds)`` with :mod:`pipelines.stages.quality_gate`
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

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError, ModelVersionMismatchError, PartitionNotFoundError
from pipelines.stages.quality_gate import Check, QualityReport, check_recommendations
from pipelines.tables.audit import (
    STATUS_PUBLISHED,
    STATUS_SKIPPED,
    AuditRecord,
    AuditRow,
    audited,
    latest_success,
    read_audit,
)
from pipelines.tables.schemas import (
    CANDIDATE_LINK_WEIGHTS,
    RECOMMENDATIONS,
    USER_CANDIDATES,
    USER_HISTORIES,
    USER_LINKS,
)
from pipelines.tools import report as rpt

if TYPE_CHECKING:
    from pipelines.tables.store import TableStore

log = logging.getLogger(__name__)

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
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not self.run_id:
            raise ConfigError("run_id must not be empty")


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


def run_model_version(audit_rows: Sequence[AuditRow], run_id: str, recs_versions: Sequence[str]) -> str:
    """The model version this run scored with (audit of score_topk), else the only one in the rows."""
    scored = latest_success(audit_rows, "score_topk", run_id) or latest_success(audit_rows, "score_topk")
    if scored is not None and scored.get("model_version"):
        return str(scored["model_version"])
    if len(recs_versions) == 1:
        return recs_versions[0]
    raise ModelVersionMismatchError(
        f"recommendations hold model versions {recs_versions} and run_audit names none for this run"
    )


def already_published(audit_rows: Sequence[AuditRow], cfg: PublishConfig, version: int) -> bool:
    return any(r["job"] == JOB and r["run_id"] == cfg.run_id and r["status"] == STATUS_PUBLISHED
               and r["table_version"] == version for r in audit_rows)


def validate_and_report(store: TableStore, cfg: PublishConfig, record: AuditRecord) -> QualityReport:
    """Check recommendations(ds), write the report; the caller publishes if it passed."""
    from pyspark.sql import functions as F

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
        stages=rpt.stages_from_audit([*audit_rows, provisional(record)], cfg.run_id),
    )
    coverage = rpt.catalogue_coverage(agg.item_counts, agg.catalogue_ids)
    record.metrics["catalogue_coverage"] = round(coverage.share, 6)
    path = write_report(store.root, cfg.ds, rpt.render_report(data))
    record.metrics["report"] = path
    log.info("run report: %s", path)
    return gate


def provisional(record: AuditRecord) -> AuditRow:
    """This job's own row as the report shows it (its audit row is appended after the report)."""
    import datetime as dt

    return {"ds": record.ds, "job": record.job, "run_id": record.run_id, "status": "running",
            "model_version": record.model_version, "started_at": record.started_at,
            "finished_at": dt.datetime.now(dt.UTC), "table_version": record.table_version, "metrics": {}}


def validate_publish(store: TableStore, cfg: PublishConfig) -> AuditRecord:
    """Gate ``recommendations(ds)``, write the run report, and append the ``published`` audit row
    only if every check passed (:class:`QualityGateError` otherwise).  A retry of the same run
    that already published the same table version does nothing more (status ``skipped``)."""
    with audited(store, JOB, cfg.ds, cfg.run_id) as record:
        version = store.version(RECOMMENDATIONS)
        if version is not None and already_published(read_audit(store, cfg.ds), cfg, version):
            record.status = STATUS_SKIPPED
            record.metrics["skipped_reason"] = f"run {cfg.run_id} already published version {version}"
            log.info("recommendations(ds=%s) version %d already published by run %s; run report: %s",
                     cfg.ds, version, cfg.run_id, report_location(store.root, cfg.ds))
            return record
        gate = validate_and_report(store, cfg, record)
        gate.raise_if_failed()
        record.status = STATUS_PUBLISHED
    log.info("published recommendations(ds=%s) version %s of model %s", cfg.ds, record.table_version,
             record.model_version)
    return record
