"""MovieLens-100K quality: train and evaluate models with the product's CLI, fixed seeds
(by default the three the quality target compares; ``--models`` can add lime-mha).

    python benchmarks/ml100k_quality.py [--seeds 0,1] [--models lime-xor,full-attention,popularity] [--jobs 2]

Each run is exactly what a user types::

    lime-rank train --interactions ml-100k --model M --out CKPT --seed S --threads T
    lime-rank evaluate --checkpoint CKPT --interactions ml-100k --out JSON

(temporal leave-one-out, full-catalogue ranking; docs/model.md has the protocol).  Training
stops at its own CPU-time budget (process CPU time, 14 minutes by default).  ``--jobs``
runs go side by side, each with ``cores / jobs`` torch threads (one per core on this 2-core
machine): one thread wastes no CPU time waiting on another, so every model fits more epochs
in the same budget.  Run it on an otherwise idle machine: under contention torch's threads
burn CPU time waiting, so fewer epochs fit the budget.  Writes ``benchmarks/results/ml100k.json``: every
run's metrics, per-model means and the summary ratios the model issue asks for.
"""

from __future__ import annotations

import argparse
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, log, machine, read_results, write_results

MODELS = ("lime-xor", "full-attention", "lime-mha", "popularity")
DEFAULT_MODELS = ("lime-xor", "full-attention", "popularity")  # the ones the quality target compares
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")


def cli() -> list[str]:
    return [sys.executable, "-m", "jobs.cli"]


def train_and_evaluate(model: str, seed: int, threads: int, tmp: Path) -> dict[str, Any]:
    ckpt, out = tmp / f"{model}-{seed}.pt", tmp / f"{model}-{seed}.json"
    train = ["train", "--interactions", "ml-100k", "--model", model, "--out", str(ckpt), "--seed", str(seed),
             "--threads", str(threads)]
    evaluate = ["evaluate", "--checkpoint", str(ckpt), "--interactions", "ml-100k", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cli() + train, check=True)
    train_s = time.perf_counter() - t0
    subprocess.run(cli() + evaluate, check=True)
    result = json.loads(out.read_text())
    return {"model": model, "seed": seed, "train_wall_seconds": round(train_s, 1),
            **{m: result[m] for m in METRICS}, "users": result["users"],
            "command": " && ".join("lime-rank " + " ".join(a) for a in (train, evaluate))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    means: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        means[model] = {m: round(statistics.fmean(r[m] for r in mine), 4) for m in METRICS}
        means[model]["seeds"] = len(mine)
    summary: dict[str, Any] = {"means": means}
    if "lime-xor" in means and "full-attention" in means:
        summary["xor_over_full_ndcg@10"] = round(means["lime-xor"]["ndcg@10"] / means["full-attention"]["ndcg@10"], 3)
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
