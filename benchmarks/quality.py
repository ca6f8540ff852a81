"""MovieLens-100K quality: train and evaluate models with the product's CLI, fixed seeds
(by default the three the quality target compares; ``--models`` can add lime-mha).

    python benchmarks/ml100k_quality.py [--seeds 0,1] [--models lime-xor,full-attention,popularity] [--jobs 2]

Each run is exactly what a user types::

    lime-rank train --interactions ml-100k --model M --out CKPT --seed S --threads T
    lime-rank evaluate --checkpoint CKPT --interactions ml-100k --out JSON --ranks-out CSV

(temporal leave-one-out, full-catalogue ranking; docs/model.md has the protocol).  Training
stops at its own CPU-time budget (process CPU time, 14 minutes by default).  ``--jobs``
runs go side by side, each with ``cores / jobs`` torch threads (one per core on this 2-core
machine): one thread wastes no CPU time waiting on another, so every model fits more epochs
in the same budget.  Run it on an otherwise idle machine: under contention torch's threads
burn CPU time waiting, so fewer epochs fit the budget.  Writes ``benchmarks/results/ml100k.json``: every
run's metrics, per-model means and the summary ratios the model issue asks for.

The 943 test users are a sample: the ratio of two models' NDCG@10 carries the noise of which
users happen to be in it.  Every run also writes each user's target rank, and the summary gives
a paired bootstrap interval for ``xor_over_full_ndcg@10`` (users resampled with replacement, the
same users for both models; each user's NDCG@10 averaged over the seeds first).  It measures the
user-sampling noise only; the per-seed figures show the training noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, log, machine, read_results, write_results
from lime_model.evaluate import ndcg_per_user

MODELS = ("lime-xor", "full-attention", "lime-mha", "popularity")
DEFAULT_MODELS = ("lime-xor", "full-attention", "popularity")  # the ones the quality target compares
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")
BOOTSTRAP_RESAMPLES = 10_000


def cli() -> list[str]:
    return [sys.executable, "-m", "jobs.cli"]


def train_and_evaluate(model: str, seed: int, threads: int, tmp: Path) -> dict[str, Any]:
    ckpt, out, ranks = tmp / f"{model}-{seed}.pt", tmp / f"{model}-{seed}.json", tmp / f"{model}-{seed}.csv"
    train = ["train", "--interactions", "ml-100k", "--model", model, "--out", str(ckpt), "--seed", str(seed),
             "--threads", str(threads)]
    evaluate = ["evaluate", "--checkpoint", str(ckpt), "--interactions", "ml-100k", "--out", str(out),
                "--ranks-out", str(ranks)]
    t0 = time.perf_counter()
    subprocess.run(cli() + train, check=True)
    train_s = time.perf_counter() - t0
    subprocess.run(cli() + evaluate, check=True)
    result = json.loads(out.read_text())
    return {"model": model, "seed": seed, "train_wall_seconds": round(train_s, 1),
            **{m: result[m] for m in METRICS}, "users": result["users"], "model_version": result["model_version"],
            "rank_by_user": read_ranks(ranks),
            "command": " && ".join("lime-rank " + " ".join(a) for a in (train, evaluate))}


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
    means: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        means[model] = {m: round(statistics.fmean(r[m] for r in mine), 4) for m in METRICS}
        means[model]["seeds"] = len(mine)
    summary: dict[str, Any] = {"means": means}
    if "lime-xor" in means and "full-attention" in means:
        summary["xor_over_full_ndcg@10"] = round(means["lime-xor"]["ndcg@10"] / means["full-attention"]["ndcg@10"], 3)
        by_model = [[r for r in runs if r["model"] == m] for m in ("lime-xor", "full-attention")]
        if all("rank_by_user" in r for mine in by_model for r in mine):
            (users, xor), (full_users, full) = (seed_mean_ndcg10(mine) for mine in by_model)
            if users != full_users:
                raise ValueError("lime-xor and full-attention were evaluated on different users")
            lo, hi = paired_bootstrap_ratio(xor, full)
            summary["xor_over_full_ndcg@10_ci95"] = [round(lo, 3), round(hi, 3)]
            summary["bootstrap"] = {"users": len(users), "resamples": BOOTSTRAP_RESAMPLES,
                                    "method": "paired percentile bootstrap over test users, seed-averaged"}
    if "lime-xor" in means and "popularity" in means:
        summary["xor_over_popularity_ndcg@10"] = round(
            means["lime-xor"]["ndcg@10"] / means["popularity"]["ndcg@10"], 3)
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs of the existing results file that are not re-measured")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (cores are split between them)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    # popularity has no randomness: one run says everything
    plan = [(m, s) for m in models for s in (seeds[:1] if m == "popularity" else seeds)]
    kept = read_results("ml100k.json") if args.merge else None
    runs: list[dict[str, Any]] = [r for r in (kept or {}).get("runs", []) if (r["model"], r["seed"]) not in plan]
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="lime-ml100k-") as tmp_name, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        log(f"ml-100k: {len(plan)} runs, {args.jobs} side by side with {threads} torch thread(s) each")
        pending = [pool.submit(train_and_evaluate, model, seed, threads, Path(tmp_name)) for model, seed in plan]
        for (model, seed), future in zip(plan, pending, strict=True):
            runs.append(future.result())  # in plan order; a failed run stops the benchmark here
            log(f"ml-100k: {model} seed {seed} done")
            results.update(runs=runs, summary=summarise(runs))
            write_results("ml100k.json", results)
    log(f"wrote {RESULTS / 'ml100k.json'}: {json.dumps(results['summary'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
