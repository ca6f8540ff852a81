"""validate_publish: gate the committed recommendations, write the report, publish only on success."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from jobs.validate_publish import main
from pipelines.errors import ModelVersionMismatchError
from pipelines.stages.validate_publish import report_location, run_model_version, write_report
from pipelines.tables.audit import STATUS_PUBLISHED, STATUS_SUCCEEDED, AuditRecord, append_audit, read_audit
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import (
    CANDIDATE_LINK_WEIGHTS,
    ITEMS,
    RECOMMENDATIONS,
    USER_CANDIDATES,
    USER_HISTORIES,
    USER_LINKS,
    TableSpec,
)
from pipelines.tables.store import WriteRequest

DS = "2024-01-05"
RUN = "scheduled__2024-01-05T02:00:00+00:00"
MV = "mv-test"
TS = dt.datetime(2024, 1, 5, tzinfo=dt.UTC)
# catalogue 1..6; K = 2; user 1 saw {1, 2}, user 2 saw {3}, user 3 has no usable history (popular list)
HISTORIES = {1: [1, 2], 2: [3], 3: []}
GOOD_RECS = [
    (1, 1, 3, 0.9, "model"), (1, 2, 4, 0.5, "model"),
    (2, 1, 1, 0.7, "model"), (2, 2, 2, 0.1, "model"),
    (3, 1, 1, 2.0, "popular"), (3, 2, 2, 1.0, "popular"),
]


def _write(store: DeltaRsStore, spec: TableSpec, rows: list[dict[str, object]], app: str) -> None:
    store.write_arrow(pa.Table.from_pylist(rows, schema=spec.schema), WriteRequest(spec, "append", app))


def _recs(rows: list[tuple[int, int, int, float, str]], mv: str = MV) -> list[dict[str, object]]:
    return [{"ds": DS, "user_id": u, "rank": r, "item_id": i, "score": s, "model_version": mv, "source": src}
            for u, r, i, s, src in rows]


def _lakehouse(root: Path, recs: list[dict[str, object]], links_mv: str = MV) -> DeltaRsStore:
    store = DeltaRsStore(None, root)
    _write(store, ITEMS, [{"item_id": i, "title": f"item {i}"} for i in range(1, 7)], "items")
    _write(store, USER_HISTORIES, [
        {"ds": DS, "user_id": u, "item_ids": items, "ts": [TS] * len(items), "n": len(items),
         "seen_item_ids": sorted(set(items)), "n_seen": len(set(items)), "extracted_ds": DS}
        for u, items in HISTORIES.items()], "histories")
    _write(store, USER_LINKS, [
        {"ds": DS, "model_version": links_mv, "user_id": u, "l_p": [0.0, 1.0]} for u in (1, 2)], "links")
    _write(store, CANDIDATE_LINK_WEIGHTS, [
        {"model_version": MV, "item_id": i, "link_weights": [0.5, 0.5], "cand_vec": [1.0], "bias": 0.0}
        for i in range(1, 7)], "candidates")
    table = pa.Table.from_pylist(recs, schema=RECOMMENDATIONS.schema)
    # delta-rs directly, not the table layer, which refuses NaN scores before they are committed
    write_deltalake(store.uri("recommendations"), table, partition_by=["ds"])
    append_audit(store, AuditRecord(job="score_topk", ds=DS, run_id=RUN, model_version=MV,
                                    metrics={"rows_written": len(recs)}))
    return store


def _run(root: Path, *extra: str) -> int:
    return main(["--lakehouse", str(root), "--ds", DS, "--top-k", "2", "--run-id", RUN,
                 "--master", "local[2]", "--shuffle-partitions", "2", *extra])


def _rows(root: Path, job: str = "validate_publish") -> list[dict[str, object]]:
    return [r for r in read_audit(DeltaRsStore(None, root), DS) if r["job"] == job]


@pytest.mark.spark
def test_good_run_is_published_with_a_report(
    spark, lakehouse: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    _lakehouse(lakehouse, _recs(GOOD_RECS))
    with caplog.at_level(logging.INFO):
        assert _run(lakehouse) == 0
    report = lakehouse / "_reports" / f"ds={DS}" / "run_report.html"
    assert f"run report: {report}" in caplog.text
    page = report.read_text()
    assert 'id="gate"><span class="pass">PASSED' in page
    assert '<td id="coverage">66.7% (4 of 6 items)</td>' in page
    [row] = _rows(lakehouse)
    assert (row["status"], row["model_version"], row["table_version"]) == (STATUS_PUBLISHED, MV, 0)
    assert row["metrics"]["report"] == str(report)
    assert not [p for p in report.parent.iterdir() if p.name != "run_report.html"]  # no temporary file left

    # a retry of the same run publishes nothing twice
    assert _run(lakehouse) == 0
    assert [r["status"] for r in _rows(lakehouse)] == [STATUS_PUBLISHED, "skipped"]


@pytest.mark.spark
@pytest.mark.parametrize(("recs", "links_mv", "failed_check"), [
    # a NaN the table layer would refuse, committed by another writer: the gate reads what is committed
    pytest.param([(1, 1, 3, float("nan"), "model"), *GOOD_RECS[1:]], MV, "finite_scores", id="nan-score"),
    pytest.param(GOOD_RECS[2:], "mv-other", "users", id="user-lost-and-links-of-another-model"),
    pytest.param([(1, 1, 3, 0.9, "model"), (1, 1, 4, 0.5, "model"), *GOOD_RECS[2:]], MV, "ranks",
                 id="rank-given-twice"),
    pytest.param([(1, 1, 3, 0.9, "model"), (1, 2, 3, 0.5, "model"), *GOOD_RECS[2:]], MV, "distinct_items",
                 id="item-recommended-twice"),
])
def test_failed_gate_exits_1_and_does_not_publish(
    spark, lakehouse: Path, recs: list[tuple[int, int, int, float, str]], links_mv: str, failed_check: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _lakehouse(lakehouse, _recs(recs), links_mv=links_mv)
    assert _run(lakehouse) == 1
    if links_mv != MV:
        assert _rows(lakehouse)[0]["metrics"]["quality"]["checks"]["model_version"] is False
    assert f"QualityGateError: quality gate failed for recommendations(ds={DS})" in caplog.text
    [row] = _rows(lakehouse)
    assert row["status"] == "failed" and row["metrics"]["quality"]["checks"][failed_check] is False
    page = (lakehouse / "_reports" / f"ds={DS}" / "run_report.html").read_text()
    assert 'id="gate"><span class="fail">FAILED' in page


@pytest.mark.spark
def test_per_user_candidate_lists_set_the_expected_rows(spark, lakehouse: Path) -> None:
    # user 2 ranked its own one-item list: one row is right, and only the flag tells the gate so
    store = _lakehouse(lakehouse, _recs([r for r in GOOD_RECS if r[:2] != (2, 2)]))
    _write(store, USER_CANDIDATES, [{"ds": DS, "user_id": 2, "item_ids": [1, 3]}], "own-lists")
    assert _run(lakehouse, "--user-candidates") == 0
    assert _rows(lakehouse)[-1]["status"] == STATUS_PUBLISHED


@pytest.mark.spark
def test_recommendations_of_a_model_without_candidates_fail_the_gate(spark, lakehouse: Path) -> None:
    _lakehouse(lakehouse, _recs(GOOD_RECS))
    store = DeltaRsStore(None, lakehouse)
    append_audit(store, AuditRecord(job="score_topk", ds=DS, run_id=RUN, model_version="mv-gone"))
    assert _run(lakehouse) == 1
    [row] = _rows(lakehouse)
    assert row["metrics"]["quality"]["checks"]["candidate_link_weights"] is False


def test_missing_recommendations_partition_is_a_clear_error(
    lakehouse: Path, caplog: pytest.LogCaptureFixture, spark,
) -> None:
    assert _run(lakehouse) == 1
    assert f"table 'recommendations' has no rows in partition ds={DS}; run score-topk" in caplog.text


def test_model_version_comes_from_this_runs_score_topk() -> None:
    rows: list[dict[str, object]] = [
        {"job": "score_topk", "run_id": "other", "status": STATUS_SUCCEEDED, "model_version": "old"},
        {"job": "score_topk", "run_id": RUN, "status": STATUS_SUCCEEDED, "model_version": "new"},
    ]
    assert run_model_version(rows, RUN, ["new", "old"]) == "new"
    assert run_model_version(rows, "manual-1", ["x"]) == "new"  # no row of this run: latest of ds
    assert run_model_version([], RUN, ["only"]) == "only"
    with pytest.raises(ModelVersionMismatchError, match=r"model versions \['a', 'b'\]"):
        run_model_version([], RUN, ["a", "b"])


def test_report_is_replaced_atomically(tmp_path: Path) -> None:
    first = write_report(str(tmp_path), DS, "<p>one</p>")
    second = write_report(str(tmp_path), DS, "<p>two</p>")
    assert first == second == report_location(str(tmp_path), DS)
    assert Path(second).read_text() == "<p>two</p>"
    assert [p.name for p in Path(second).parent.iterdir()] == ["run_report.html"]
