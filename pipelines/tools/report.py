"""The run report: one self-contained HTML page per nightly run.

``validate_publish`` collects a few small aggregates of ``recommendations(ds)``
and its inputs with Spark (:func:`collect_aggregates`: per-item counts, a score
histogram, counts per source; never the rows themselves), adds the run's audit
rows and the quality checks, and :func:`render_report` turns them into HTML with
the plots embedded as base64 PNGs (matplotlib, no pyplot state, Agg canvas):

* score distribution of the model's recommendations (the popularity fallback's
  scores are interaction counts, not comparable, so they are left out);
* catalogue coverage: how often each catalogue item is recommended, items sorted;
* popularity of the recommended items: share of recommendations per popularity
  decile of the catalogue (decile 1 = the 10% items seen most in ``user_histories(ds)``);
* rows written and seconds per stage, from ``run_audit``.

Everything but :func:`collect_aggregates` is pure (pandas / numpy in, str out).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame

    from pipelines.tables.audit import AuditRow

# the stages of a nightly run, in DAG order (the report's rows-and-time plot follows it)
STAGE_ORDER = (
    "extract_histories", "precompute_candidates", "infer_user_links", "score_topk", "validate_publish",
)
POPULARITY_BUCKETS = 10


class CheckLike(Protocol):
    """A quality check (``pipelines.stages.quality_gate.Check``)."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def detail(self) -> str: ...


@dataclass(frozen=True)
class ScoreHistogram:
    """``counts[i]`` scores in ``[edges[i], edges[i+1])`` (the last bin is closed)."""

    counts: np.ndarray  # (bins,) int64
    edges: np.ndarray  # (bins + 1,) float64
    non_finite: int = 0

    def __post_init__(self) -> None:
        assert len(self.edges) == len(self.counts) + 1, "a histogram has one more edge than bins"

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class StageTiming:
    """One stage of the run as the audit recorded it."""

    job: str
    status: str
    seconds: float
    rows: int | None  # rows written (None: the stage wrote no table, or was skipped, or unknown)
    rows_unknown: bool = False  # the stage wrote rows but the engine could not count them
    mode: str = ""  # incremental stages: "incremental (N recomputed, M reused)" or "full: why"


@dataclass(frozen=True)
class SourceCount:
    users: int
    rows: int


@dataclass(frozen=True)
class ReportData:
    """All the report shows; every table here is small (at most one row per catalogue item).

    ``item_counts``: (item_id int64, recommendations int64), items recommended at least once;
    ``popularity``: (item_id int64, interactions int64), item occurrences in ``user_histories(ds)``;
    ``catalogue_ids``: (n_items,) int64, the ``items`` table.
    """

    ds: str
    run_id: str
    top_k: int
    model_version: str
    passed: bool
    checks: Sequence[CheckLike]
    sources: Mapping[str, SourceCount]
    scores: ScoreHistogram
    item_counts: pd.DataFrame
    catalogue_ids: np.ndarray
    popularity: pd.DataFrame
    stages: Sequence[StageTiming]
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def users(self) -> int:
        return sum(s.users for s in self.sources.values())

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sources.values())


# -- numbers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coverage:
    catalogue: int  # items in the catalogue
    recommended: int  # catalogue items recommended to at least one user
    outside_catalogue: int  # recommended item ids that are not in the catalogue (should be 0)

    @property
    def share(self) -> float:
        return self.recommended / self.catalogue if self.catalogue else 0.0


def catalogue_coverage(item_counts: pd.DataFrame, catalogue_ids: np.ndarray) -> Coverage:
    """Share of the catalogue that appears in at least one user's list."""
    catalogue = np.unique(np.asarray(catalogue_ids, dtype=np.int64))
    recommended = np.unique(item_counts.loc[item_counts["recommendations"] > 0, "item_id"].to_numpy(np.int64))
    inside = np.isin(recommended, catalogue)
    return Coverage(len(catalogue), int(inside.sum()), int((~inside).sum()))


def popularity_deciles(
    item_counts: pd.DataFrame, popularity: pd.DataFrame, catalogue_ids: np.ndarray,
    buckets: int = POPULARITY_BUCKETS,
) -> np.ndarray:
    """Share of recommendations per popularity bucket of the catalogue, shape ``(buckets,)``.

    Catalogue items are ranked by interactions (descending, item id ascending on ties;
    items never seen count 0) and cut into ``buckets`` equal groups: bucket 0 holds
    the most popular ``1/buckets`` of the catalogue.  Recommendations of items outside
    the catalogue are not counted.  The shares sum to 1 (all zeros without recommendations).
    """
    catalogue = pd.DataFrame({"item_id": np.unique(np.asarray(catalogue_ids, dtype=np.int64))})
    ranked = catalogue.merge(popularity[["item_id", "interactions"]], on="item_id", how="left")
    ranked["interactions"] = ranked["interactions"].fillna(0)
    ranked = ranked.sort_values(["interactions", "item_id"], ascending=[False, True], kind="stable")
    ranked["bucket"] = (np.arange(len(ranked)) * buckets) // max(len(ranked), 1)
    recs = ranked.merge(item_counts[["item_id", "recommendations"]], on="item_id", how="inner")
    per_bucket = recs.groupby("bucket")["recommendations"].sum().reindex(range(buckets), fill_value=0)
    total = per_bucket.sum()
    shares = per_bucket.to_numpy(np.float64)
    return shares / total if total else shares


RECOMPUTED_COUNTS = ("users_extracted", "users_reinferred", "users_rescored")


def mode_text(metrics: Mapping[str, object]) -> str:
    """What an incremental stage's audit row says of its mode, for the report ("" for the others)."""
    mode = metrics.get("mode")
    if mode is None:
        return ""
    recomputed = next((metrics[k] for k in RECOMPUTED_COUNTS if k in metrics), None)
    reused = metrics.get("users_reused")
    counts = (f"{recomputed:,} recomputed, {reused:,} reused"
              if isinstance(recomputed, int) and isinstance(reused, int) else "counts not recorded")
    if mode == "incremental":
        return f"incremental ({counts})"
    return f"{mode}: {metrics.get('mode_reason', 'no reason recorded')}"


def stages_from_audit(rows: Sequence[AuditRow], run_id: str) -> list[StageTiming]:
    """The last audit row of each stage of ``run_id``, in DAG order (unknown jobs last)."""
    latest: dict[str, AuditRow] = {}
    for row in sorted((r for r in rows if r["run_id"] == run_id), key=lambda r: r["finished_at"]):
        latest[row["job"]] = row
    order = {job: i for i, job in enumerate(STAGE_ORDER)}
    stages = []
    for job in sorted(latest, key=lambda j: (order.get(j, len(order)), j)):
        row = latest[job]
        metrics = row.get("metrics") or {}
        written = metrics.get("rows_written")
        unknown = "rows_written" in metrics and written is None  # recorded as null: not counted
        stages.append(StageTiming(job, row["status"], (row["finished_at"] - row["started_at"]).total_seconds(),
                                  None if written is None else int(written), rows_unknown=unknown,
                                  mode=mode_text(metrics)))
    return stages


# -- plots -------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 3.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_scores(hist: ScoreHistogram) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    if hist.total:
        ax.stairs(hist.counts, hist.edges, fill=True, alpha=0.8)
    ax.set_xlabel("score")
    ax.set_ylabel("recommendations")
    ax.set_title(f"Score distribution (source = model, {hist.total:,} scores)")
    return _png(fig)


def plot_coverage(item_counts: pd.DataFrame, coverage: Coverage) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    counts = np.sort(item_counts["recommendations"].to_numpy(np.int64))[::-1]
    counts = np.concatenate([counts, np.zeros(max(coverage.catalogue - len(counts), 0), np.int64)])
    ax.fill_between(np.arange(1, len(counts) + 1), counts, step="post", alpha=0.8)
    ax.set_xlim(1, max(len(counts), 2))
    ax.set_xlabel("catalogue items, most recommended first")
    ax.set_ylabel("times recommended")
    ax.set_title(f"Catalogue coverage {coverage.share:.1%} "
                 f"({coverage.recommended:,} of {coverage.catalogue:,} items)")
    return _png(fig)


def plot_popularity(shares: np.ndarray) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    buckets = np.arange(1, len(shares) + 1)
    ax.bar(buckets, shares * 100.0)
    ax.axhline(100.0 / len(shares), color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(buckets)
    ax.set_xlabel(f"item popularity bucket (1 = top {100 // len(shares)}% of the catalogue by interactions)")
    ax.set_ylabel("% of recommendations")
    ax.set_title("Popularity of recommended items")
    ax.legend()
    return _png(fig)


def plot_stages(stages: Sequence[StageTiming]) -> str:
    fig = _figure(9.6, 0.5 * max(len(stages), 2) + 1.2)
    rows_ax, time_ax = fig.subplots(1, 2, sharey=True)
    names = [s.job for s in stages]
    y = np.arange(len(stages))
    rows_ax.barh(y, [s.rows or 0 for s in stages])
    rows_ax.set_yticks(y, names)
    rows_ax.invert_yaxis()
    rows_ax.set_xlabel("rows written")
    time_ax.barh(y, [s.seconds for s in stages], color="tab:orange")
    time_ax.set_xlabel("seconds (job body, from run_audit)")
    fig.suptitle("Rows and time per stage")
    return _png(fig)


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
.pass { color: #070; font-weight: bold; } .fail { color: #b00; font-weight: bold; }
img { display: block; margin: 0.5em 0 1.5em; max-width: 100%; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _rows(pairs: Sequence[tuple[str, str, str]]) -> str:
    """(id, label, value) -> table rows; values are escaped here."""
    return "\n".join(
        f'<tr><th>{_esc(label)}</th><td id="{key}">{_esc(value)}</td></tr>' for key, label, value in pairs
    )


def _status(passed: bool) -> str:
    return '<span class="pass">PASSED</span>' if passed else '<span class="fail">FAILED</span>'


def _num(value: float | None, fmt: str = ",") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _rows_cell(stage: StageTiming) -> str:
    return "unknown" if stage.rows_unknown else _num(stage.rows)


def _summary_rows(data: ReportData, coverage: Coverage, shares: np.ndarray) -> list[tuple[str, str, str]]:
    """(id, label, value) rows of the report's summary table."""
    return [
        ("ds", "ds", data.ds),
        ("run_id", "run id", data.run_id),
        ("model_version", "model version", data.model_version),
        ("top_k", "K", str(data.top_k)),
        ("users", "users", _num(data.users)),
        ("rows", "rows", _num(data.rows)),
        *[(f"source_{name}", f"users with source={name}", f"{_num(c.users)} ({_num(c.rows)} rows)")
          for name, c in sorted(data.sources.items())],
        ("coverage", "catalogue coverage",
         f"{coverage.share:.1%} ({coverage.recommended:,} of {coverage.catalogue:,} items)"),
        ("top_decile_share", "recommendations of the top-10% popular items", f"{shares[0]:.1%}"),
        ("non_finite_scores", "NaN/infinite scores", _num(data.scores.non_finite)),
    ]


def render_report(data: ReportData) -> str:
    """The run report as one HTML document (plots embedded, no external resources)."""
    coverage = catalogue_coverage(data.item_counts, data.catalogue_ids)
    shares = popularity_deciles(data.item_counts, data.popularity, data.catalogue_ids)
    summary = _summary_rows(data, coverage, shares)
    checks = "\n".join(
        f"<tr><td>{_esc(c.name)}</td><td>{_status(c.passed)}</td><td>{_esc(c.detail)}</td></tr>"
        for c in data.checks
    )
    stages = "\n".join(
        f"<tr><td>{_esc(s.job)}</td><td>{_esc(s.status)}</td><td>{_rows_cell(s)}</td>"
        f"<td>{s.seconds:.1f}</td><td>{_esc(s.mode)}</td></tr>"
        for s in data.stages
    )
    plots = [
        ("scores", "Score distribution", plot_scores(data.scores)),
        ("coverage", "Catalogue coverage", plot_coverage(data.item_counts, coverage)),
        ("popularity", "Popularity of recommended items", plot_popularity(shares)),
        ("stages", "Rows and time per stage", plot_stages(data.stages)),
    ]
    images = "\n".join(
        f'<h2>{_esc(title)}</h2>\n<img id="plot-{key}" alt="{_esc(title)}" src="data:image/png;base64,{png}">'
        for key, title, png in plots
    )
    title = f"LIME Rank run report: ds={data.ds}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p>Quality gate: <span id="gate">{_status(data.passed)}</span>.
Generated {_esc(data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))}.</p>
<table>
{_rows(summary)}
</table>
<h2>Quality checks</h2>
<table>
<tr><th>check</th><th>result</th><th>detail</th></tr>
{checks}
</table>
<h2>Stages</h2>
<table>
<tr><th>stage</th><th>status</th><th>rows written</th><th>seconds (job body)</th><th>mode</th></tr>
{stages}
</table>
{images}
</body>
</html>
"""


# -- Spark side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Aggregates:
    """What :func:`collect_aggregates` brings to the driver (small: O(catalogue + bins))."""

    sources: dict[str, SourceCount]
    scores: ScoreHistogram
    item_counts: pd.DataFrame
    catalogue_ids: np.ndarray
    popularity: pd.DataFrame


def collect_aggregates(recs: DataFrame, histories: DataFrame, items: DataFrame, bins: int = 40) -> Aggregates:
    """Per-source counts, the model-score histogram, per-item counts and popularity.

    ``recs``: recommendations(ds); ``histories``: user_histories(ds); ``items``: the catalogue.
    """
    from pyspark.sql import functions as F

    from pipelines.tables.spark_rows import first_row

    sources = {
        str(r["source"]): SourceCount(int(r["users"]), int(r["rows"]))
        for r in recs.groupBy("source").agg(
            F.countDistinct("user_id").alias("users"), F.count(F.lit(1)).alias("rows")).collect()
    }
    score = F.col("score").cast("double")
    finite = score.isNotNull() & ~F.isnan(score) & (F.abs(score) != float("inf"))
    model = recs.where(F.col("source") == "model")
    stats = first_row(model.agg(
        F.min(F.when(finite, score)).alias("lo"), F.max(F.when(finite, score)).alias("hi"),
        F.sum((~finite).cast("long")).alias("bad"),
    ), "the score range of the recommendations")
    counts = np.zeros(bins, np.int64)
    if stats["lo"] is None:
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        lo, hi = float(stats["lo"]), float(stats["hi"])
        hi = hi if hi > lo else lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        width = (hi - lo) / bins
        bucket = F.least(F.floor((score - F.lit(lo)) / F.lit(width)).cast("int"), F.lit(bins - 1))
        for r in model.where(finite).groupBy(bucket.alias("b")).count().collect():
            counts[int(r["b"])] = int(r["count"])
    item_counts = _pandas(recs.groupBy("item_id").agg(F.count(F.lit(1)).alias("recommendations")))
    popularity = _pandas(
        histories.select(F.explode("item_ids").alias("item_id"))
        .groupBy("item_id").agg(F.count(F.lit(1)).alias("interactions"))
    )
    catalogue_ids = items.select("item_id").distinct().toArrow().column("item_id").to_numpy()
    return Aggregates(
        sources=sources,
        scores=ScoreHistogram(counts, edges, int(stats["bad"] or 0)),
        item_counts=item_counts.astype({"item_id": "int64", "recommendations": "int64"}),
        catalogue_ids=np.asarray(catalogue_ids, np.int64),
        popularity=popularity.astype({"item_id": "int64", "interactions": "int64"}),
    )


def _pandas(frame: DataFrame) -> pd.DataFrame:
    """``frame.toPandas()``: pyspark annotates it with a pandas alias that its own stubs do not
    resolve for mypy, so the pandas DataFrame it returns is named here."""
    return cast("pd.DataFrame", frame.toPandas())
