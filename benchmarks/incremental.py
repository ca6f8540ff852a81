"""An incremental nightly run against a full run of the same day, side by side.

    python benchmarks/incremental.py [--users 200000 --items 50000 --active 0.05] [--quick]

Synthetic events over 30 days, day 30 run in full; then one more day on which ``--active`` of
the users have events (3 on average, at random items and times of the day).  Then ``--rounds``
times (default 3): the lakehouse is copied twice, and that day runs with ``full=True`` on one
copy and incrementally on the other, in the same Spark session (``local[2]``), the four nightly
stages each; ``full_s``, ``incremental_s`` and the stages' seconds are the medians over the
rounds, ``speedup`` their ratio (each round's ratio in ``speedup_runs``).  The tables of each
pair are compared: ``user_histories`` equal, ``user_links`` and ``recommendations`` the same
rows with values within 1e-5 (``identical_to_full``: every round).  Writes ``benchmarks/results/incremental.json``
(``incremental-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import pyarrow as pa

from benchmarks.common import log, machine, timed, write_results

DAY0 = "2024-01-30"  # the synthetic world's 30th and last day
DAY1 = "2024-01-31"
K = 10
MODEL = {"d_model": 32, "n_heads": 2, "n_links": 8, "n_layers": 2, "max_history": 50, "use_time_gaps": True}
STAGES = ("extract_histories", "precompute_candidates", "infer_user_links", "score_topk")


def run_day(spark: Any, root: Path, ds: str, ckpt: str, *, full: bool) -> dict[str, Any]:
    """The four stages of ``ds`` on the lakehouse at ``root``: seconds and audit metrics per stage."""
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.runtime.scoring_task import ScoringConfig
    from pipelines.stages.context import RunContext
    from pipelines.stages.extract_histories import extract_histories
    from pipelines.stages.infer_user_links import infer_user_links
    from pipelines.stages.precompute_candidates import precompute_candidates
    from pipelines.stages.score_topk import score_topk
    from pipelines.tables.delta_rs import DeltaRsStore

    ctx = RunContext.open(spark, DeltaRsStore(spark, root), ds, f"bench-{uuid.uuid4().hex[:8]}", ckpt)
    steps = {
        "extract_histories": lambda: extract_histories(ctx, MODEL["max_history"], full=full),
        "precompute_candidates": lambda: precompute_candidates(ctx, "cpu"),
        "infer_user_links": lambda: infer_user_links(
            ctx, InferenceConfig(ckpt, ctx.model_version, device="cpu"), full=full),
        "score_topk": lambda: score_topk(ctx, ScoringConfig(ckpt, ctx.model_version, top_k=K), full=full),
    }
    seconds, metrics = {}, {}
    for stage, step in steps.items():
        result, seconds[stage] = timed(step)
        metrics[stage] = {k: v for k, v in result.metrics.items()
                          if k.startswith(("users", "mode", "seconds_", "link_files"))
                          or k in ("previous_ds", "scoring_input", "seen_join")}
    return {"seconds": seconds, "seconds_total": sum(seconds.values()), "audit": metrics}


def day1_events(users: int, items: np.ndarray, active: float, seed: int) -> pa.Table:
    """Events of the extra day: ``active`` of the users, 1 + Poisson(2) events each."""
    from pipelines.tables.schemas import EVENTS

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(users, size=max(1, round(users * active)), replace=False))
    counts = 1 + rng.poisson(2.0, size=len(chosen))
    user_ids = np.repeat(chosen, counts).astype(np.int64)
    start = pd.Timestamp(DAY1, tz="UTC").value // 1000
    micros = start + rng.integers(0, 86_400 * 1_000_000, size=len(user_ids))
    return pa.table({
        "event_date": pa.array([DAY1] * len(user_ids), pa.string()),
        "user_id": user_ids,
        "item_id": rng.choice(items, size=len(user_ids)).astype(np.int64),
        "ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
    }, schema=EVENTS.schema)


def read_partition(root: Path, table: str, ds: str, keys: list[str]) -> pd.DataFrame:
    from deltalake import DeltaTable

    frame = DeltaTable(str(root / table)).to_pandas(filters=[("ds", "=", ds)])
    return frame.sort_values(keys).reset_index(drop=True)


def differences(inc: Path, full: Path, ds: str) -> list[str]:
    """What differs between the two runs' tables (empty: identical within 1e-5)."""
    out = []
    a, b = (read_partition(r, "user_histories", ds, ["user_id"]) for r in (inc, full))
    for col in ("user_id", "item_ids", "ts", "n", "seen_item_ids", "n_seen"):
        if len(a) != len(b) or any(not np.array_equal(x, y) for x, y in zip(a[col], b[col], strict=True)):
            out.append(f"user_histories.{col}")
    a, b = (read_partition(r, "user_links", ds, ["user_id"]) for r in (inc, full))
    if not a.user_id.equals(b.user_id):
        out.append("user_links.user_id")
    elif len(a):
        gap = np.abs(np.stack(a.l_p.to_numpy()) - np.stack(b.l_p.to_numpy())).max(axis=1)
        if gap.max() > 1e-5:
            out.append(f"user_links.l_p: {int((gap > 1e-5).sum())} user(s) differ by more than 1e-5, "
                       f"at most {gap.max():.2e} (users {a.user_id[gap > 1e-5].tolist()[:5]})")
    a, b = (read_partition(r, "recommendations", ds, ["user_id", "rank"]) for r in (inc, full))
    for col in ("user_id", "rank", "source", "model_version"):
        if len(a) != len(b) or not a[col].equals(b[col]):
            out.append(f"recommendations.{col}")
    if out[-1:] == ["recommendations.rank"] or len(a) != len(b):
        return out
    swapped = a.user_id[a.item_id != b.item_id].unique()
    if len(swapped):
        out.append(f"recommendations.item_id: {len(swapped)} user(s) (users {swapped.tolist()[:5]})")
    gap = np.abs(a.score.to_numpy() - b.score.to_numpy()) / np.maximum(1.0, np.abs(b.score.to_numpy()))
    if len(gap) and gap.max() > 1e-5:
        out.append(f"recommendations.score: {int((gap > 1e-5).sum())} score(s) differ by more than 1e-5 "
                   f"(relative to max(1, |score|)), at most {gap.max():.2e}")
    return out


def changed_users(root: Path) -> set[int]:
    """Users whose history row differs between the two days (or who are new)."""
    before, after = (read_partition(root, "user_histories", ds, ["user_id"]).set_index("user_id")
                     for ds in (DAY0, DAY1))
    same = before.index.intersection(after.index)
    differs = {int(u) for u in same if not (np.array_equal(before.item_ids[u], after.item_ids[u])
                                            and np.array_equal(before.ts[u], after.ts[u])
                                            and np.array_equal(before.seen_item_ids[u], after.seen_item_ids[u]))}
    return differs | {int(u) for u in after.index.difference(before.index)}


def reusable_files(root: Path, table: str, changed: set[int]) -> dict[str, Any]:
    """How many of ``table``'s day-0 files hold no changed user: the files a day-1 partition could
    reuse by pointing at them (Delta add actions with ``ds`` = day 1) instead of copying rows."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    files = DeltaTable(str(root / table)).file_uris(partition_filters=[("ds", "=", DAY0)])
    clean = sum(1 for f in files if not changed.intersection(
        pq.read_table(f.removeprefix("file://"), columns=["user_id"]).column(0).to_pylist()))
    return {"files": len(files), "reusable": clean, "share": round(clean / max(len(files), 1), 4)}


def build_day0(spark: Any, root: Path, users: int, items: int, seed: int) -> tuple[str, np.ndarray, float, int]:
    """Synthetic events of 30 days and day 30 run in full: (checkpoint, item ids, seconds, events)."""
    from lime_model.synthetic import random_checkpoint
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tools.input_tables import write_synthetic
    from pipelines.tools.synthetic_data import SyntheticConfig, item_ids

    cfg = SyntheticConfig(users=users, items=items, days=30, seed=seed, mean_events_per_user=20.0)
    if cfg.last_day.isoformat() != DAY0:
        raise RuntimeError(f"the synthetic world ends on {cfg.last_day}, not on {DAY0}")
    written = write_synthetic(spark, DeltaRsStore(spark, root), cfg)
    ckpt = str(root.parent / "model.ckpt")
    random_checkpoint(ckpt, item_ids(items), seed=seed, **MODEL)
    day0 = run_day(spark, root, DAY0, ckpt, full=True)
    return ckpt, item_ids(items), day0["seconds_total"], int(written.events.rows or 0)


def run_pair(spark: Any, base: Path, tmp: Path, ckpt: str, rep: int) -> tuple[dict, dict, list[str], set[int]]:
    """Day 1 in full and incrementally, each on its own copy of ``base``: (full, incremental,
    differences, users changed)."""
    full_root, inc_root = (Path(shutil.copytree(base, tmp / f"{name}-{rep}")) for name in ("full", "inc"))
    full = run_day(spark, full_root, DAY1, ckpt, full=True)
    inc = run_day(spark, inc_root, DAY1, ckpt, full=False)
    log(f"round {rep}: full {full['seconds_total']:.1f} s, incremental {inc['seconds_total']:.1f} s")
    diff, changed = differences(inc_root, full_root, DAY1), changed_users(inc_root)
    if rep == 0:
        inc["pointers"] = {t: reusable_files(inc_root, t, changed) for t in ("user_links", "recommendations")}
    shutil.rmtree(full_root)
    shutil.rmtree(inc_root)
    return full, inc, diff, changed


def median_stages(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {stage: round(float(np.median([r["seconds"][stage] for r in runs])), 2) for stage in STAGES}


def measure(spark: Any, tmp: Path, users: int, items: int, active: float, seed: int,
            rounds: int) -> dict[str, Any]:
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tables.schemas import EVENTS
    from pipelines.tables.store import WriteRequest

    base = tmp / "lake"
    ckpt, ids, day0_s, events = build_day0(spark, base, users, items, seed)
    extra = day1_events(users, ids, active, seed + 1)
    DeltaRsStore(spark, base).write_arrow(extra, WriteRequest(EVENTS, "append", f"bench:{DAY1}:events"))
    log(f"day {DAY1}: {extra.num_rows} events of {len(set(extra.column('user_id').to_pylist()))} users; "
        f"{rounds} round(s) of a full and an incremental run")
    pairs = [run_pair(spark, base, tmp, ckpt, rep) for rep in range(rounds)]
    fulls, incs = [p[0]["seconds_total"] for p in pairs], [p[1]["seconds_total"] for p in pairs]
    diff = sorted({d for p in pairs for d in p[2]})
    full_s, inc_s = float(np.median(fulls)), float(np.median(incs))
    return {
        "users": users, "items": items, "active_fraction": active, "days": 31, "events_before": events,
        "events_day1": extra.num_rows, "model": MODEL, "top_k": K, "day0_full_s": round(day0_s, 2),
        "rounds": rounds, "full_s": round(full_s, 2), "incremental_s": round(inc_s, 2),
        "speedup": round(full_s / inc_s, 2),
        "full_runs_s": [round(x, 2) for x in fulls], "incremental_runs_s": [round(x, 2) for x in incs],
        "speedup_runs": [round(f / i, 2) for f, i in zip(fulls, incs, strict=True)],
        "identical_to_full": not diff, "differences": diff, "users_changed": len(pairs[0][3]),
        "reusable_file_share": pairs[0][1]["pointers"],
        "stages_full_s": median_stages([p[0] for p in pairs]),
        "stages_incremental_s": median_stages([p[1] for p in pairs]),
        "audit_full": pairs[-1][0]["audit"], "audit_incremental": pairs[-1][1]["audit"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--active", type=float, default=0.05, help="share of users with events on the new day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="full + incremental pairs; medians reported")
    parser.add_argument("--quick", action="store_true", help="2,000 users x 1,000 items (a smoke run)")
    args = parser.parse_args(argv)
    if not 0 < args.active <= 1:
        parser.error(f"--active must be in (0, 1], got {args.active}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    users, items = (2_000, 1_000) if args.quick else (args.users, args.items)
    from benchmarks.pipeline_throughput import session

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    spark = session()
    with tempfile.TemporaryDirectory(prefix="lime-bench-incremental-") as tmp:
        result, seconds = timed(lambda: measure(spark, Path(tmp), users, items, args.active, args.seed,
                                                args.rounds))
    spark.stop()
    payload = {"started": started, "machine": machine(), "spark_master": "local[2]", **result,
               "bench_seconds": round(seconds, 1)}
    path = write_results("incremental-quick.json" if args.quick else "incremental.json", payload)
    log(f"wrote {path}: speedup {payload['speedup']}x, identical_to_full {payload['identical_to_full']}")
    print(json.dumps({k: payload[k] for k in ("full_s", "incremental_s", "speedup", "identical_to_full")}))
    return 0 if payload["identical_to_full"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
