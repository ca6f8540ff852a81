"""Ranking quality on two datasets: train and evaluate models with the product's CLI.

    python benchmarks/quality.py [--datasets ml-100k,amazon-sports] [--seeds 0,1] [--jobs 2]

Each run is exactly what a user types::

    lime-rank train --interactions DATA --model M --out CKPT --seed S --threads T --cpu-budget-minutes B
    lime-rank evaluate --checkpoint CKPT --interactions DATA --out JSON --ranks-out CSV

(temporal leave-one-out, full-catalogue ranking; docs/model.md has the protocol), with the product's
defaults for every model and the same CPU-time budget for every model of a setting.  Settings:

* ``ml-100k`` (943 test users) at the default budget (14 CPU-minutes) and at 3 CPU-minutes: real
  catalogues are large relative to the compute a nightly retrain gets, so a model that needs many
  epochs to catch up loses in practice even if it ties at convergence;
* ``amazon-sports`` (35,598 test users, ``../shared/data/amazon-sports.tsv``) at the default budget.

``--jobs`` runs go side by side, each with ``cores / jobs`` torch threads (one per core on this
2-core machine).  Run it on an otherwise idle machine: under contention fewer epochs fit the budget.
Writes ``benchmarks/results/quality.json``: every run's metrics and per-user target ranks, and per
setting the per-model means, ``xor_over_sasrec_ndcg@10`` with its 95% paired user-bootstrap interval
(users resampled with replacement, the same users for both models, each user's NDCG@10 averaged
over the seeds first: it measures the user-sampling noise; the per-seed figures show the training
noise) and ``xor_over_popularity_ndcg@10``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, log, machine, read_results, write_results
from lime_model.data import build_sequences, leave_one_out
from lime_model.datasets import read_interactions
from lime_model.evaluate import ndcg_per_user
from lime_model.vocab import ItemVocabulary

MODELS = ("lime-xor", "sasrec", "lime-mha", "popularity")
DEFAULT_MODELS = ("lime-xor", "sasrec", "popularity")  # the ones the quality target compares
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")
BOOTSTRAP_RESAMPLES = 10_000
RESULT_NAME = "quality.json"
RANKS = RESULTS / "quality-ranks.json.gz"
AMAZON_SPORTS = REPO.parent / "shared" / "data" / "amazon-sports.tsv"
DEFAULT_BUDGET_MINUTES = 14.0


@dataclass(frozen=True)
class Setting:
    """One dataset at one CPU budget; ``name`` keys the summary."""

    name: str
    dataset: str
    budget_minutes: float


SETTINGS = {
    "ml-100k": [Setting("ml-100k", "ml-100k", DEFAULT_BUDGET_MINUTES), Setting("ml-100k@3min", "ml-100k", 3.0)],
    "amazon-sports": [Setting("amazon-sports", "amazon-sports", DEFAULT_BUDGET_MINUTES)],
}


def cli() -> list[str]:
    return [sys.executable, "-m", "jobs.cli"]


def interactions_arg(dataset: str) -> str:
    if dataset == "ml-100k":
        return "ml-100k"
    if not AMAZON_SPORTS.exists():
        raise FileNotFoundError(f"{AMAZON_SPORTS} is missing: the amazon-sports setting reads it from shared/data")
    return str(AMAZON_SPORTS)


def train_and_evaluate(setting: Setting, model: str, seed: int, threads: int, tmp: Path) -> dict[str, Any]:
    stem = tmp / f"{setting.name}-{model}-{seed}"
    ckpt, out, ranks = stem.with_suffix(".pt"), stem.with_suffix(".json"), stem.with_suffix(".csv")
    data = interactions_arg(setting.dataset)
    train = ["train", "--interactions", data, "--model", model, "--out", str(ckpt), "--seed", str(seed),
             "--threads", str(threads), "--cpu-budget-minutes", f"{setting.budget_minutes:g}"]
    evaluate = ["evaluate", "--checkpoint", str(ckpt), "--interactions", data, "--out", str(out),
                "--ranks-out", str(ranks)]
    t0 = time.perf_counter()
    subprocess.run(cli() + train, check=True)
    train_s = time.perf_counter() - t0
    subprocess.run(cli() + evaluate, check=True)
    result = json.loads(out.read_text())
    return {"setting": setting.name, "model": model, "seed": seed, "train_wall_seconds": round(train_s, 1),
            **{m: result[m] for m in METRICS}, "users": result["users"], "model_version": result["model_version"],
            "trained": train_summary(ckpt), "rank_by_user": read_ranks(ranks),
            "command": " && ".join("lime-rank " + " ".join(a) for a in (train, evaluate))}


def train_summary(ckpt: Path) -> dict[str, Any]:
    """What the checkpoint says of its training run (epochs, what stopped it, CPU time)."""
    from lime_model.checkpoint import load_checkpoint

    meta = load_checkpoint(ckpt).metadata
    return {k: meta.get(k) for k in ("best_epoch", "epochs_run", "stopped_by", "train_cpu_seconds")}


def read_ranks(ranks_csv: Path) -> dict[str, int]:
    """``lime-rank evaluate --ranks-out`` CSV -> {user id: 0-based rank of that user's target}."""
    with ranks_csv.open() as f:
        return {row["user_id"]: int(row["rank"]) for row in csv.DictReader(f)}


def paired_bootstrap_ratio(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = 0) -> tuple[float, float]:
    """Per-user scores of two models over the same users ``(U,)`` -> the 2.5th and 97.5th
    percentiles of ``mean(a) / mean(b)`` over ``resamples`` resamplings of the users with
    replacement (the same resampled users for both)."""
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long non-empty 1-D arrays, got shapes {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for start in range(0, resamples, 1000):
        idx = rng.integers(0, len(a), size=(min(1000, resamples - start), len(a)))
        ratios[start:start + len(idx)] = a[idx].mean(1) / b[idx].mean(1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def seed_mean_ndcg10(runs: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Runs of one model -> (user ids sorted, each user's NDCG@10 averaged over the runs ``(U,)``);
    every run must cover the same users."""
    users = sorted(runs[0]["rank_by_user"])
    for run in runs[1:]:
        if sorted(run["rank_by_user"]) != users:
            raise ValueError(f"{run['model']} seed {run['seed']} was evaluated on other users "
                             f"than seed {runs[0]['seed']}")
    ranks = np.array([[r["rank_by_user"][u] for u in users] for r in runs])  # (runs, U)
    return users, ndcg_per_user(ranks, 10).mean(0)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one setting -> per-model means over the seeds and the ratios the quality target reads."""
    means: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        means[model] = {m: round(statistics.fmean(r[m] for r in mine), 4) for m in METRICS}
        means[model]["seeds"] = len(mine)
    summary: dict[str, Any] = {"means": means}
    if "lime-xor" in means and "sasrec" in means:
        summary["xor_over_sasrec_ndcg@10"] = round(means["lime-xor"]["ndcg@10"] / means["sasrec"]["ndcg@10"], 3)
        by_model = [[r for r in runs if r["model"] == m] for m in ("lime-xor", "sasrec")]
        if all("rank_by_user" in r for mine in by_model for r in mine):
            (users, xor), (ref_users, ref) = (seed_mean_ndcg10(mine) for mine in by_model)
            if users != ref_users:
                raise ValueError("lime-xor and sasrec were evaluated on different users")
            lo, hi = paired_bootstrap_ratio(xor, ref)
            summary["xor_over_sasrec_ndcg@10_ci95"] = [round(lo, 3), round(hi, 3)]
            summary["bootstrap"] = {"users": len(users), "resamples": BOOTSTRAP_RESAMPLES,
                                    "method": "paired percentile bootstrap over test users, seed-averaged"}
    if "lime-xor" in means and "popularity" in means:
        summary["xor_over_popularity_ndcg@10"] = round(
            means["lime-xor"]["ndcg@10"] / means["popularity"]["ndcg@10"], 3)
    return summary


def summarise_settings(runs: list[dict[str, Any]],
                       seen_users: Callable[[str], set[str]] | None = None) -> dict[str, Any]:
    """All runs -> {setting: :func:`summarise` of its runs, with its CPU budget and, when the runs
    carry their ranks, :func:`by_transition` with ``seen_users(dataset)`` (default
    :func:`seen_transition_users`)."""
    seen_users = seen_users or seen_transition_users
    settings = {s.name: s for group in SETTINGS.values() for s in group}
    out = {}
    for name in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == name]
        out[name] = {"cpu_budget_minutes": settings[name].budget_minutes, **summarise(mine)}
        if all("rank_by_user" in r for r in mine):
            out[name]["by_transition"] = by_transition(mine, seen_users(settings[name].dataset))
    return out


@functools.cache
def seen_transition_users(dataset: str) -> set[str]:
    """Test users whose target follows their newest history item somewhere in the training data (the
    same two items, adjacent and in this order, in any user's training part): the users a model can
    serve by remembering item-to-item transitions.  Same ordering rules as evaluation."""
    frame = read_interactions(interactions_arg(dataset))
    split = leave_one_out(build_sequences(frame, ItemVocabulary.from_raw(frame["item_id"].to_numpy())))
    pairs = {pair for items in split.train_items
             for pair in zip(items[:-1].tolist(), items[1:].tolist(), strict=True)}
    histories, _, targets = split.stage("test")
    users = split.sequences.user_ids[split.eval_users]
    return {str(user) for user, history, target in zip(users, histories, targets, strict=True)
            if (int(history[-1]), int(target)) in pairs}


def by_transition(runs: list[dict[str, Any]], seen: set[str]) -> dict[str, Any]:
    """Runs of one setting -> each model's NDCG@10 (seed mean) over the test users whose
    (newest history item, target) pair occurs in training (``seen``) and over the others."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        users, ndcg = seed_mean_ndcg10([r for r in runs if r["model"] == model])
        mask = np.array([u in seen for u in users])
        out[model] = {"seen_ndcg@10": round(float(ndcg[mask].mean()), 4) if mask.any() else None,
                      "unseen_ndcg@10": round(float(ndcg[~mask].mean()), 4) if (~mask).any() else None}
    users = next(iter(r["rank_by_user"] for r in runs))
    return {"seen_users": sum(u in seen for u in users), "users": len(users), **out}


def plan_runs(settings: list[Setting], models: list[str], seeds: list[int]) -> list[tuple[Setting, str, int]]:
    """The longest runs first (so that two side-by-side jobs end together); popularity has no
    randomness, one run of it says everything."""
    plan = [(s, m, seed) for s in settings for m in models for seed in (seeds[:1] if m == "popularity" else seeds)]
    return sorted(plan, key=lambda p: (p[1] == "popularity", -p[0].budget_minutes))


def run_key(run: dict[str, Any]) -> str:
    return f"{run['setting']}/{run['model']}/{run['seed']}"


def write_quality(results: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """quality.json (metrics, no per-user ranks) and quality-ranks.json.gz (every run's ranks by
    user, what the bootstrap intervals are computed from), each replaced atomically."""
    ranks = {run_key(r): r["rank_by_user"] for r in runs}
    part = RANKS.with_name(RANKS.name + ".part")
    with gzip.open(part, "wt") as f:
        json.dump(ranks, f)
    part.replace(RANKS)
    results.update(runs=[{k: v for k, v in r.items() if k != "rank_by_user"} for r in runs],
                   summary=summarise_settings(runs))
    write_results(RESULT_NAME, results)


def read_kept_runs() -> list[dict[str, Any]]:
    """The runs of the existing results, with their ranks, for ``--merge``; each run keeps the start
    time of the benchmark that measured it (``measured_in_run_started``)."""
    kept = read_results(RESULT_NAME)
    if not kept:
        return []
    with gzip.open(RANKS, "rt") as f:
        ranks = json.load(f)
    return [{"measured_in_run_started": kept.get("started"), **r, "rank_by_user": ranks[run_key(r)]}
            for r in kept["runs"]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(SETTINGS), help=f"comma-separated, from {list(SETTINGS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs of the existing results file that are not re-measured")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (cores are split between them)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    models, datasets = [m for m in args.models.split(",") if m], [d for d in args.datasets.split(",") if d]
    for kind, names, known in (("model", models, MODELS), ("dataset", datasets, tuple(SETTINGS))):
        if sorted(set(names) - set(known)):
            parser.error(f"unknown {kind}(s) {sorted(set(names) - set(known))}; choose from {list(known)}")
    plan = plan_runs([s for d in datasets for s in SETTINGS[d]], models, [int(s) for s in args.seeds.split(",") if s])
    planned = {f"{s.name}/{m}/{seed}" for s, m, seed in plan}
    runs = [r for r in (read_kept_runs() if args.merge else []) if run_key(r) not in planned]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict[str, Any] = {"machine": machine(), "started": started,
                               "kept_runs": sorted(run_key(r) for r in runs)}
    with tempfile.TemporaryDirectory(prefix="lime-quality-") as tmp_name, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        log(f"quality: {len(plan)} runs, {args.jobs} side by side with {threads} torch thread(s) each")
        pending = [pool.submit(train_and_evaluate, s, m, seed, threads, Path(tmp_name)) for s, m, seed in plan]
        for (setting, model, seed), future in zip(plan, pending, strict=True):
            # in plan order; a failed run stops the benchmark here
            runs.append({**future.result(), "measured_in_run_started": started})
            log(f"quality: {setting.name} {model} seed {seed} done")
            write_quality(results, runs)
    log(f"wrote {RESULTS / RESULT_NAME}: {json.dumps(results['summary'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
