"""The run report: numbers on tiny inline data, plots present, HTML escaped."""

from __future__ import annotations

import base64
import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.stages.quality_gate import Check
from pipelines.tools.report import (
    ReportData,
    ScoreHistogram,
    SourceCount,
    StageTiming,
    catalogue_coverage,
    collect_aggregates,
    popularity_deciles,
    render_report,
    stages_from_audit,
)

T0 = dt.datetime(2024, 1, 6, 2, 0, tzinfo=dt.UTC)


def _items(counts: dict[int, int]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(counts), "recommendations": list(counts.values())}, dtype="int64")


CATALOGUE = np.arange(1, 11, dtype=np.int64)  # items 1..10
ITEM_COUNTS = _items({1: 5, 2: 3, 3: 2, 99: 4})  # 99 is not in the catalogue
POPULARITY = pd.DataFrame({"item_id": np.arange(1, 11), "interactions": np.arange(10, 0, -1)}, dtype="int64")


def test_coverage_counts_catalogue_items_recommended_at_least_once() -> None:
    result = catalogue_coverage(ITEM_COUNTS, CATALOGUE)
    assert (result.catalogue, result.recommended, result.outside_catalogue) == (10, 3, 1)
    assert result.share == pytest.approx(0.3)


def test_coverage_ignores_zero_counts_and_duplicate_catalogue_ids() -> None:
    result = catalogue_coverage(_items({1: 0, 2: 1}), np.array([1, 2, 2, 3]))
    assert (result.catalogue, result.recommended) == (3, 1)


def test_popularity_deciles_share_of_recommendations_by_item_popularity() -> None:
    shares = popularity_deciles(ITEM_COUNTS, POPULARITY, CATALOGUE)
    expected = np.array([0.5, 0.3, 0.2, 0, 0, 0, 0, 0, 0, 0])  # item 99 is outside the catalogue
    np.testing.assert_allclose(shares, expected)


def test_popularity_buckets_rank_unseen_items_last_and_break_ties_by_id() -> None:
    # items 3 and 4 never appear in histories; 1 and 2 tie: 1 first.  Two buckets of two items.
    popularity = pd.DataFrame({"item_id": [1, 2], "interactions": [7, 7]}, dtype="int64")
    shares = popularity_deciles(_items({2: 1, 4: 3}), popularity, np.array([1, 2, 3, 4]), buckets=2)
    np.testing.assert_allclose(shares, [0.25, 0.75])


def _audit(job: str, run_id: str, status: str, start_s: float, secs: float,
           rows: int | None) -> dict[str, object]:
    metrics: dict[str, object] = {} if rows is None else {"rows_written": rows}
    return {"job": job, "run_id": run_id, "status": status, "started_at": T0 + dt.timedelta(seconds=start_s),
            "finished_at": T0 + dt.timedelta(seconds=start_s + secs), "metrics": metrics}


def test_stages_follow_the_dag_order_and_keep_the_last_attempt_of_the_run() -> None:
    rows = [
        _audit("score_topk", "r1", "failed", 100, 5, None),
        _audit("extract_histories", "r1", "succeeded", 0, 12.5, 300),
        _audit("score_topk", "r1", "succeeded", 200, 7, 3000),
        _audit("extract_histories", "r0", "succeeded", -900, 99, 1),  # another run
        _audit("infer_user_links", "r1", "skipped", 50, 1, None),
    ]
    assert stages_from_audit(rows, "r1") == [
        StageTiming("extract_histories", "succeeded", 12.5, 300),
        StageTiming("infer_user_links", "skipped", 1.0, None),
        StageTiming("score_topk", "succeeded", 7.0, 3000),
    ]


def _data(passed: bool = True, checks: list[Check] | None = None) -> ReportData:
    return ReportData(
        ds="2024-01-05", run_id="manual__2024-01-05T00:00:00+00:00", top_k=3, model_version="mv-abc",
        passed=passed,
        checks=checks or [Check("rows_per_user", True, "0 user(s) without min(K=3, eligible) rows")],
        sources={"model": SourceCount(4, 12), "popular": SourceCount(1, 3)},
        scores=ScoreHistogram(np.array([1, 4, 7]), np.array([-1.0, 0.0, 1.0, 2.0]), non_finite=0),
        item_counts=ITEM_COUNTS, catalogue_ids=CATALOGUE, popularity=POPULARITY,
        stages=[StageTiming("extract_histories", "succeeded", 12.5, 300),
                StageTiming("score_topk", "succeeded", 7.0, 15)],
    )


def _cell(page: str, key: str) -> str:
    match = re.search(rf'<td id="{key}">([^<]*)</td>', page)
    assert match, f"no cell {key}"
    return match.group(1)


def test_report_shows_the_numbers_of_the_run() -> None:
    page = render_report(_data())
    assert _cell(page, "coverage") == "30.0% (3 of 10 items)"
    assert _cell(page, "top_decile_share") == "50.0%"
    assert (_cell(page, "users"), _cell(page, "rows")) == ("5", "15")
    assert _cell(page, "source_popular") == "1 (3 rows)"
    assert _cell(page, "model_version") == "mv-abc"
    assert 'id="gate"><span class="pass">PASSED' in page


def test_report_embeds_four_png_plots() -> None:
    page = render_report(_data())
    plots = dict(re.findall(r'<img id="plot-(\w+)"[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page))
    assert sorted(plots) == ["coverage", "popularity", "scores", "stages"]
    for png in plots.values():
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_gate_is_shown_and_details_are_escaped() -> None:
    page = render_report(_data(passed=False, checks=[Check("ranks", False, "2 user(s) <bad> & co")]))
    assert 'id="gate"><span class="fail">FAILED' in page
    assert "2 user(s) &lt;bad&gt; &amp; co" in page and "<bad>" not in page


def test_report_of_a_run_without_model_scores_still_renders() -> None:
    data = _data()
    no_scores = ScoreHistogram(np.zeros(3, np.int64), np.linspace(0, 1, 4))
    empty = ReportData(**{**data.__dict__, "scores": no_scores, "item_counts": _items({}), "stages": []})
    page = render_report(empty)
    assert _cell(page, "coverage") == "0.0% (0 of 10 items)"
    assert page.count("data:image/png;base64,") == 4


@pytest.mark.spark
def test_collect_aggregates_counts_per_source_bins_model_scores_and_flags_nan(spark) -> None:
    recs = spark.createDataFrame(pd.DataFrame({
        "user_id": [1, 1, 2, 2, 3, 3],
        "item_id": [10, 11, 10, 12, 10, 11],
        "score": [0.0, 1.0, 0.5, float("nan"), 50.0, 40.0],
        "source": ["model", "model", "model", "model", "popular", "popular"],
    }).astype({"score": "float32"}))
    histories = spark.createDataFrame(pd.DataFrame({"user_id": [1, 2], "item_ids": [[10, 13], [10]]}))
    items = spark.createDataFrame(pd.DataFrame({"item_id": [10, 11, 12, 13, 14]}))
    agg = collect_aggregates(recs, histories, items, bins=2)
    assert agg.sources == {"model": SourceCount(2, 4), "popular": SourceCount(1, 2)}
    # model scores 0.0, 0.5, 1.0 in two bins over [0, 1] (the last bin closed); the NaN is counted apart
    np.testing.assert_array_equal(agg.scores.counts, [1, 2])
    np.testing.assert_allclose(agg.scores.edges, [0.0, 0.5, 1.0])
    assert agg.scores.non_finite == 1
    item_counts = dict(zip(agg.item_counts.item_id, agg.item_counts.recommendations, strict=True))
    assert item_counts == {10: 3, 11: 2, 12: 1}
    assert dict(zip(agg.popularity.item_id, agg.popularity.interactions, strict=True)) == {10: 2, 13: 1}
    assert sorted(agg.catalogue_ids.tolist()) == [10, 11, 12, 13, 14]


def test_the_stage_table_says_which_stages_ran_incrementally_and_why_the_others_did_not() -> None:
    incremental = {**_audit("infer_user_links", "r1", "succeeded", 0, 3, 200),
                   "metrics": {"rows_written": 200, "mode": "incremental", "mode_reason": "links of the day before",
                               "users_reinferred": 12, "users_reused": 1188}}
    full = {**_audit("score_topk", "r1", "succeeded", 5, 7, 12000),
            "metrics": {"rows_written": 12000, "mode": "full",
                        "mode_reason": "top_k was 10 on the previous day, now 20", "users_rescored": 1200,
                        "users_reused": 0}}
    stages = stages_from_audit([incremental, full], "r1")
    assert [s.mode for s in stages] == ["incremental (12 recomputed, 1,188 reused)",
                                        "full: top_k was 10 on the previous day, now 20"]
    page = render_report(ReportData(**{**vars(_data()), "stages": stages}))
    assert "<td>incremental (12 recomputed, 1,188 reused)</td>" in page
    assert "<td>full: top_k was 10 on the previous day, now 20</td>" in page


def test_rows_an_engine_could_not_count_show_as_unknown_not_as_a_number() -> None:
    """delta-spark without history metrics: the commit has rows=None, the audit null, the report "unknown"."""
    from pipelines.tables.audit import AuditRecord

    record = AuditRecord("score_topk", "2024-01-05", "r1")
    record.count("rows_written", None)
    assert record.metrics == {"rows_written": None}
    row = {**_audit("score_topk", "r1", "succeeded", 0, 7, None), "metrics": record.metrics}
    stages = stages_from_audit([row], "r1")
    assert stages == [StageTiming("score_topk", "succeeded", 7.0, None, rows_unknown=True)]
    page = render_report(ReportData(**{**vars(_data()), "stages": stages}))
    assert "<tr><td>score_topk</td><td>succeeded</td><td>unknown</td>" in page
