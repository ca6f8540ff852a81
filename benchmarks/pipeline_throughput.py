"""Pipeline throughput against the limit and against the peers a data engineer would pick.

    python benchmarks/pipeline_throughput.py [--profile full|quick] [--only limit,naive,mllib,memory,scale]

Writes ``benchmarks/results/pipeline.json`` (``pipeline-quick.json`` for the quick profile).
Everything is measured side by side in one run on this machine, Spark ``local[2]``:

1. limit   - users/s of infer + score through the Spark stages vs a plain single-process torch
             loop doing the same inference and exact top-K on the same cores: ``vs_raw_torch``
             (rounds of both side by side: the best round of each, the pipeline's cold first round
             gives ``vs_raw_torch_cold``);
2. naive   - the job a data engineer writes first (cross join users x candidates, score rows in a
             pandas UDF, window top-K) vs our score stage on the same data: ``vs_naive_spark``;
3. mllib   - ``ALSModel.recommendForAllUsers`` vs our block top-K engine on the same ALS factors:
             ``vs_mllib_als`` and ``mllib_topk_identical`` (ties aside);
4. memory  - peak memory (JVM + Python workers) of the score stage for N and 10N users with the
             same catalogue, each in a fresh process: ``memory_ratio_10x_users``;
5. scale   - time per stage up to 1M users x 100k items.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import log, machine, read_results, run_with_peak_memory, timed, write_results

DS = "2024-01-30"
K = 10
# the product's default model shape (the ML-100K model) for the limit; a lighter one where the
# peers would not finish otherwise, and for the 1M x 100k scale point (stated in the JSON)
MODEL_DEFAULT = {"d_model": 64, "n_heads": 2, "n_links": 32, "n_layers": 2, "max_history": 100,
                 "use_time_gaps": True}
MODEL_LIGHT = {"d_model": 32, "n_heads": 2, "n_links": 8, "n_layers": 2, "max_history": 50, "use_time_gaps": True}

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "limit": {"users": 30_000, "items": 20_000, "rounds": 4},
        "naive": {"users": 800, "items": 4_000},
        "mllib": {"users": 50_000, "items": 20_000, "rank": 32},
        "memory": {"users": 10_000, "items": 2_000},
        "scale": [(10_000, 10_000), (100_000, 100_000), (1_000_000, 100_000)],
        "events_per_user": 20.0,
    },
    "quick": {
        "limit": {"users": 1_500, "items": 800, "rounds": 2},
        "naive": {"users": 150, "items": 300},
        "mllib": {"users": 2_000, "items": 500, "rank": 8},
        "memory": {"users": 500, "items": 500},
        "scale": [(2_000, 1_000)],
        "events_per_user": 10.0,
    },
}


@dataclass
class World:
    root: Path
    store: Any
    ckpt: str
    ctx: Any
    users: int
    items: int
    seconds: dict[str, float]


def session(driver_memory: str = "6g"):
    from pipelines.runtime.spark_session import SparkSettings, build_spark_session

    return build_spark_session(SparkSettings(master="local[2]", app_name="lime-rank-bench", shuffle_partitions=4,
                                             driver_memory=driver_memory))


def build_world(spark, root: Path, users: int, items: int, model: dict[str, Any], events_per_user: float,
                seed: int = 0, run_id: str = "bench") -> World:
    from lime_model.synthetic import random_checkpoint
    from pipelines.stages.context import RunContext
    from pipelines.stages.extract_histories import extract_histories
    from pipelines.stages.precompute_candidates import precompute_candidates
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tools.input_tables import write_synthetic
    from pipelines.tools.synthetic_data import SyntheticConfig, item_ids

    cfg = SyntheticConfig(users=users, items=items, days=30, seed=seed, mean_events_per_user=events_per_user)
    store = DeltaRsStore(spark, root / "lakehouse")
    seconds: dict[str, float] = {}
    _, seconds["generate"] = timed(lambda: write_synthetic(spark, store, cfg))
    ckpt = str(root / "model.ckpt")
    random_checkpoint(ckpt, item_ids(items), seed=seed, **model)
    ctx = RunContext.open(spark, store, DS, run_id, ckpt)
    _, seconds["extract_histories"] = timed(lambda: extract_histories(ctx, model["max_history"]))
    _, seconds["precompute_candidates"] = timed(lambda: precompute_candidates(ctx, "cpu"))
    return World(root, store, ckpt, ctx, users, items, seconds)


def warm_users(world: World) -> int:
    from pipelines.tables.schemas import USER_LINKS

    return world.store.partition_rows(USER_LINKS, {"ds": DS})


def run_infer(world: World, run_id: str) -> float:
    from pipelines.runtime.inference_task import InferenceConfig
    from pipelines.stages.context import RunContext
    from pipelines.stages.infer_user_links import infer_user_links

    ctx = RunContext.open(world.ctx.spark, world.store, DS, run_id, world.ckpt)
    _, seconds = timed(lambda: infer_user_links(ctx, InferenceConfig(world.ckpt, ctx.model_version,
                                                                                device="cpu")))
    return seconds


def stage_steps(world: World, job: str, run_id: str) -> dict[str, float]:
    """The ``seconds_*`` timings a stage wrote to ``run_audit`` (e.g. score_topk: score, gate, write)."""
    from pipelines.tables.audit import read_audit

    [metrics] = [r["metrics"] for r in read_audit(world.store, DS) if r["job"] == job and r["run_id"] == run_id]
    return {k.removeprefix("seconds_"): round(v, 3) for k, v in metrics.items() if k.startswith("seconds_")}


def run_score(world: World, run_id: str, **overrides: Any) -> float:
    from pipelines.runtime.scoring_task import ScoringConfig
    from pipelines.stages.context import RunContext
    from pipelines.stages.score_topk import score_topk

    ctx = RunContext.open(world.ctx.spark, world.store, DS, run_id, world.ckpt)
    cfg = ScoringConfig(world.ckpt, ctx.model_version, top_k=K, device="cpu", **overrides)
    _, seconds = timed(lambda: score_topk(ctx, cfg))
    return seconds


# --- 1. the limit ----------------------------------------------------------------------------------------
def raw_torch_loop(world: World) -> tuple[dict[str, float], int]:
    """Single process, plain torch on the same cores: encode every user, exact top-K over all
    candidates.  Returns ({"encode": s, "topk": s, "total": s}, users)."""
    import torch
    from deltalake import DeltaTable

    from lime_model.checkpoint import build_model, load_checkpoint
    from lime_model.inference import encode_histories
    from pipelines.runtime.candidate_matrix import candidate_matrix
    from pipelines.runtime.inference_task import histories_to_inputs
    from pipelines.runtime.scoring_task import CANDIDATE_BLOCK, seen_positions, topk_against

    ckpt = load_checkpoint(world.ckpt)
    model = build_model(ckpt)
    cfg = ckpt.config
    hist = pa.table(DeltaTable(world.store.uri("user_histories")).to_pyarrow_table(filters=[("ds", "=", DS)]))
    hist = hist.filter(pc.greater(hist.column("n"), 0))
    cand = pa.table(DeltaTable(world.store.uri("candidate_link_weights")).to_pyarrow_table(
        filters=[("model_version", "=", ckpt.model_version)]))
    matrix = candidate_matrix(cand, cfg.n_heads, cfg.n_links, cfg.d_model)
    batch = hist.select(["item_ids", "ts"]).combine_chunks().to_batches()[0]
    seen = batch.column("item_ids")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    # the same vectorised conversion the inference tasks run (Arrow lists -> per-user arrays)
    histories, stamps = histories_to_inputs(batch, ckpt.vocab.encode)
    l_p = encode_histories(model, histories, stamps, torch.device("cpu"))
    t1 = time.perf_counter()
    with torch.inference_mode():
        values = model.link_values(torch.from_numpy(l_p).view(-1, cfg.n_links, cfg.d_model)).float()
        for lo in range(0, len(histories), 1024):
            block = seen.slice(lo, 1024)
            topk_against(values[lo:lo + 1024], matrix, cfg.n_heads, cfg.n_links, K,
                         seen_positions(block, matrix.item_ids), CANDIDATE_BLOCK)
    t2 = time.perf_counter()
    return {"encode": t1 - t0, "topk": t2 - t1, "total": t2 - t0}, len(histories)


def bench_limit(spark, profile: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Rounds of (infer, score, raw loop) side by side; this 2-core machine's timings wander by
    +-10% run to run, so each side's best round counts: the pipeline's best warm round (round 0
    is its cold start) against the raw loop's best round of all (its setup is outside its timer
    and torch is already warm in this process, so none of its rounds is cold).

    The raw loop reads the tables and builds the model outside its timer; converting the
    histories from Arrow (the inference tasks' own vectorised code) is inside it.  The
    pipeline's first run pays Python-worker start, torch import and model load in every
    worker, which a long-lived executor pays once; its next runs still speed up (JIT, worker
    pool) -- at 30k users infer + score took 41, 36, 33 and 31 s in four rounds -- hence 4 rounds.
    """
    p = profile["limit"]
    log(f"limit: building {p['users']} users x {p['items']} items")
    world = build_world(spark, tmp / "limit", p["users"], p["items"], MODEL_DEFAULT, profile["events_per_user"])
    rounds = []
    for i in range(p["rounds"]):
        infer, score = run_infer(world, f"limit-{i}"), run_score(world, f"limit-{i}")
        raw, n = raw_torch_loop(world)
        assert n == warm_users(world), (i, n)  # both sides scored the same users, every round
        rounds.append({"infer_user_links": infer, "score_topk": score, "pipeline": infer + score,
                       "score_topk_steps": stage_steps(world, "score_topk", f"limit-{i}"),
                       "raw_torch": raw["total"], "raw_torch_encode": raw["encode"], "raw_torch_topk": raw["topk"]})
        log(f"limit round {i}: infer {infer:.1f}s + score {score:.1f}s; raw {raw['total']:.1f}s "
            f"(encode {raw['encode']:.1f}s, top-k {raw['topk']:.1f}s)")
    users = n
    warm = rounds[1:]
    best = min(warm, key=lambda r: r["pipeline"])
    best_raw = min(rounds, key=lambda r: r["raw_torch"])
    pipeline_rate = users / best["pipeline"]
    raw_rate = users / best_raw["raw_torch"]
    log(f"limit: pipeline {pipeline_rate:.0f} users/s, raw torch {raw_rate:.0f} users/s "
        f"(best rounds); cold {rounds[0]['pipeline']:.1f}s vs raw {rounds[0]['raw_torch']:.1f}s")
    return {"users": users, "items": p["items"], "model": MODEL_DEFAULT, "top_k": K, "rounds": rounds,
            "pipeline_seconds": {"infer_user_links": best["infer_user_links"], "score_topk": best["score_topk"]},
            "raw_torch_seconds_by_step": {"encode": best_raw["raw_torch_encode"], "topk": best_raw["raw_torch_topk"]},
            "cold_seconds": {"infer_user_links": rounds[0]["infer_user_links"],
                             "score_topk": rounds[0]["score_topk"], "raw_torch": rounds[0]["raw_torch"]},
            "pipeline_users_per_s": pipeline_rate, "raw_torch_seconds": best_raw["raw_torch"],
            "raw_torch_users_per_s": raw_rate, "vs_raw_torch": pipeline_rate / raw_rate,
            "vs_raw_torch_median": float(np.median([r["raw_torch"] / r["pipeline"] for r in warm])),
            "vs_raw_torch_cold": rounds[0]["raw_torch"] / rounds[0]["pipeline"]}


# --- 2. the naive Spark job -------------------------------------------------------------------------------
def naive_topk(world: World) -> Any:
    """What a data engineer writes first: every (user, candidate) pair as a row, scored by a pandas UDF."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from pipelines.tables.schemas import CANDIDATE_LINK_WEIGHTS, USER_HISTORIES, USER_LINKS

    ckpt_path, version = world.ckpt, world.ctx.model_version
    links = world.store.read(USER_LINKS, partition={"ds": DS}).select("user_id", "l_p")
    cands = world.store.read(CANDIDATE_LINK_WEIGHTS, partition={"model_version": version}).drop("model_version")
    seen = world.store.read(USER_HISTORIES, partition={"ds": DS}).select("user_id", F.col("item_ids").alias("seen"))

    @pandas_udf("float")
    def score(l_p: pd.Series, w: pd.Series, t: pd.Series, b: pd.Series) -> pd.Series:
        import torch

        from pipelines.runtime.model_runtime import load_model

        model = load_model(ckpt_path, version, torch.device("cpu"))
        cfg = model.config
        lp = torch.from_numpy(np.stack(l_p.to_numpy()).astype(np.float32)).view(-1, cfg.n_links, cfg.d_model)
        with torch.inference_mode():
            values = model.model.link_values(lp)
            wt = torch.from_numpy(np.stack(w.to_numpy()).astype(np.float32))
            tv = torch.from_numpy(np.stack(t.to_numpy()).astype(np.float32))
            bias = torch.from_numpy(b.to_numpy().astype(np.float32))
            # row i: user i x candidate i -> the diagonal of a per-row computation
            v = values.view(len(l_p), cfg.n_links, cfg.n_heads, cfg.d_model // cfg.n_heads)
            per_link = torch.einsum("nkhd,nhd->nhk", v, tv.view(len(l_p), cfg.n_heads, -1))
            out = (per_link * wt.view(len(l_p), cfg.n_heads, cfg.n_links)).sum(dim=(1, 2)) + bias
        return pd.Series(out.numpy())

    pairs = links.crossJoin(cands).join(seen, "user_id", "left")
    pairs = pairs.where(~F.coalesce(F.array_contains("seen", F.col("item_id")), F.lit(False)))
    scored = pairs.select("user_id", "item_id", score("l_p", "link_weights", "cand_vec", "bias").alias("score"))
    order = Window.partitionBy("user_id").orderBy(F.desc("score"), F.asc("item_id"))
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= K)


def bench_naive(spark, profile: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from deltalake import DeltaTable

    p = profile["naive"]
    log(f"naive: building {p['users']} users x {p['items']} items")
    world = build_world(spark, tmp / "naive", p["users"], p["items"], MODEL_DEFAULT, profile["events_per_user"])
    run_infer(world, "naive")
    t_ours = [run_score(world, f"naive-{i}") for i in range(2)][1]  # warm, as in the limit section
    naive = naive_topk(world)
    t0 = time.perf_counter()
    got = naive.select("user_id", "rank", "item_id").toPandas()
    t_naive = time.perf_counter() - t0
    ours = DeltaTable(world.store.uri("recommendations")).to_pandas()
    ours = ours[ours.source == "model"][["user_id", "rank", "item_id"]]
    key = ["user_id", "rank"]
    same = got.sort_values(key).reset_index(drop=True).astype("int64").equals(
        ours.sort_values(key).reset_index(drop=True).astype("int64"))
    users = warm_users(world)
    log(f"naive: {t_naive:.1f}s vs ours {t_ours:.1f}s on {users} users x {p['items']} items (same lists: {same})")
    return {"users": users, "items": p["items"], "model": MODEL_DEFAULT, "pair_rows": users * p["items"],
            "naive_seconds": t_naive, "ours_seconds": t_ours, "vs_naive_spark": t_naive / t_ours,
            "naive_topk_identical": bool(same)}


# --- 3. MLlib ALS -------------------------------------------------------------------------------------------
def bench_mllib(spark, profile: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from pipelines.runtime.scoring_task import dot_product_topk
    from pipelines.tables.delta_rs import DeltaRsStore
    from pipelines.tables.schemas import EVENTS
    from pipelines.tools.input_tables import write_synthetic
    from pipelines.tools.synthetic_data import SyntheticConfig

    p = profile["mllib"]
    log(f"mllib: {p['users']} users x {p['items']} items, rank {p['rank']}")
    store = DeltaRsStore(spark, tmp / "mllib" / "lakehouse")
    write_synthetic(spark, store, SyntheticConfig(users=p["users"], items=p["items"], seed=3,
                                                  mean_events_per_user=profile["events_per_user"]))
    ratings = (store.read(EVENTS).groupBy("user_id", "item_id").count()
               .select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), F.col("count").cast("float")))
    als = ALS(rank=p["rank"], maxIter=5, regParam=0.05, implicitPrefs=True, userCol="user_id", itemCol="item_id",
              ratingCol="count", seed=0, coldStartStrategy="drop")
    model, t_fit = timed(lambda: als.fit(ratings))
    user_f = model.userFactors.select(F.col("id").cast("bigint").alias("user_id"), "features").persist()
    item_f = model.itemFactors.toPandas()
    user_f.count()
    item_ids = item_f["id"].to_numpy(np.int64)
    factors = np.stack(item_f["features"].to_numpy()).astype(np.float32)

    def mllib_run() -> Any:
        recs = model.recommendForAllUsers(K)
        return recs.select("user_id", F.posexplode("recommendations").alias("pos", "rec")).select(
            F.col("user_id").cast("bigint"), (F.col("pos") + 1).alias("rank"),
            F.col("rec.item_id").cast("bigint").alias("item_id"), F.col("rec.rating").alias("score")).toPandas()

    def ours_run() -> Any:
        return dot_product_topk(user_f, item_ids, factors, K).toPandas()

    mllib_recs, t_mllib = timed(mllib_run)
    ours_recs, t_ours = timed(ours_run)
    identical, differing = compare_lists(mllib_recs, ours_recs)
    log(f"mllib: recommendForAllUsers {t_mllib:.1f}s, ours {t_ours:.1f}s, identical={identical} "
        f"({differing} users differ beyond ties)")
    return {"users": int(user_f.count()), "items": len(item_ids), "rank": p["rank"], "als_fit_seconds": t_fit,
            "mllib_seconds": t_mllib, "ours_seconds": t_ours, "vs_mllib_als": t_mllib / t_ours,
            "mllib_topk_identical": identical, "users_differing_beyond_ties": differing}


def compare_lists(a: Any, b: Any, tolerance: float = 1e-4) -> tuple[bool, int]:
    """Same top-K per user, ties aside: where the two lists differ at a position, the scores
    there agree and are tied with another listed score or with the K-th (boundary) score
    (MLlib breaks ties its own way).  Returns (identical, users differing beyond ties)."""
    right = {u: g for u, g in b.sort_values(["user_id", "rank"]).groupby("user_id")}
    differing = 0
    for user, la in a.sort_values(["user_id", "rank"]).groupby("user_id"):
        rb = right.pop(user, None)
        if rb is None or len(rb) != len(la):
            differing += 1
            continue
        ia, ib = la.item_id.to_numpy(), rb.item_id.to_numpy()
        sa, sb = la.score.to_numpy(np.float64), rb.score.to_numpy(np.float64)
        if not np.allclose(sa, sb, rtol=tolerance, atol=1e-6):
            differing += 1
            continue
        if (ia == ib).all():
            continue
        tied = [np.isclose(sa, sa[i], rtol=tolerance).sum() > 1 or np.isclose(sa[i], sa[-1], rtol=tolerance)
                for i in np.flatnonzero(ia != ib)]
        differing += 0 if all(tied) else 1
    differing += len(right)
    return differing == 0, differing


# --- 4. memory -------------------------------------------------------------------------------------------------
# the JVM heap of the scoring process: a fixed setting, as an executor's memory is in production
PROBE_DRIVER_MEMORY = "1g"


def memory_probe(root: Path) -> None:
    """(subprocess) Score one prepared lakehouse; the parent measures this process tree's peak memory."""
    spark = session(driver_memory=PROBE_DRIVER_MEMORY)
    store_root = root / "lakehouse"
    from pipelines.tables.delta_rs import DeltaRsStore

    world = World(root, DeltaRsStore(spark, store_root), str(root / "model.ckpt"), None, 0, 0, {})
    from pipelines.stages.context import RunContext

    world.ctx = RunContext.open(spark, world.store, DS, "probe", world.ckpt)
    seconds = run_score(world, f"probe-{time.time_ns()}")
    print(json.dumps({"seconds": seconds, "users": warm_users(world)}))
    spark.stop()


MEMORY_PROBES = 3


def bench_memory(spark, profile: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Peak RSS of a fresh Spark app (driver JVM + Python) scoring n and 10n users.

    Each size is probed ``MEMORY_PROBES`` times and the median peak counts: in otherwise
    identical probes the Python side (driver + Spark's Python workers) peaked at either ~0.5 or
    ~1.5 GiB, at either size, so one probe per size could swing the ratio from 0.8 to 2.5.
    Every probe's peaks are kept.
    """
    p = profile["memory"]
    out: dict[str, Any] = {"items": p["items"], "model": MODEL_DEFAULT, "probes": MEMORY_PROBES}
    for name, users in (("n", p["users"]), ("10n", 10 * p["users"])):
        log(f"memory: preparing {users} users x {p['items']} items")
        world = build_world(spark, tmp / f"memory-{name}", users, p["items"], MODEL_DEFAULT,
                            profile["events_per_user"])
        run_infer(world, "memory")
        probes = []
        for _ in range(MEMORY_PROBES):
            by_kind: dict[str, int] = {}
            stdout, peak, _ = run_with_peak_memory(
                [sys.executable, str(Path(__file__)), "--memory-probe", str(world.root)], timeout=3600,
                peaks_by_kind=by_kind)
            probe = json.loads(stdout.strip().splitlines()[-1])
            probes.append({"users": probe["users"], "peak_rss_bytes": peak, "score_seconds": probe["seconds"],
                           "peak_rss_bytes_by_kind": by_kind})
            log(f"memory: {users} users -> peak {peak / 2**20:.0f} MiB ({probe['seconds']:.1f}s; "
                + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in by_kind.items()) + ")")
        median = sorted(probes, key=lambda r: r["peak_rss_bytes"])[len(probes) // 2]
        out[name] = {**median, "driver_memory": PROBE_DRIVER_MEMORY,
                     "peak_rss_bytes_all": [r["peak_rss_bytes"] for r in probes]}
    out["memory_ratio_10x_users"] = out["10n"]["peak_rss_bytes"] / out["n"]["peak_rss_bytes"]
    return out


# --- 5. scale --------------------------------------------------------------------------------------------------
def bench_scale(spark, profile: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for users, items in profile["scale"]:
        log(f"scale: {users} users x {items} items")
        root = tmp / f"scale-{users}-{items}"
        world = build_world(spark, root, users, items, MODEL_LIGHT, profile["events_per_user"], run_id="scale")
        world.seconds["infer_user_links"] = run_infer(world, "scale")
        world.seconds["score_topk"] = run_score(world, "scale")
        from pipelines.tables.audit import read_audit

        audit = {r["job"]: r["metrics"] for r in read_audit(world.store, DS) if r["run_id"] == "scale"}
        row = {"users": users, "items": items, "model": MODEL_LIGHT,
               "events": audit["extract_histories"]["events_read"],
               "history_events": audit["extract_histories"]["history_events"],
               "recommendation_rows": audit["score_topk"]["rows_written"], "seconds": world.seconds,
               "seconds_total": sum(world.seconds.values())}
        log(f"scale: {users} x {items}: " + ", ".join(f"{k} {v:.1f}s" for k, v in world.seconds.items()))
        rows.append(row)
        shutil.rmtree(root, ignore_errors=True)
    return rows


SECTIONS = ("limit", "naive", "mllib", "memory", "scale")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections of the existing results file that are not re-measured")
    parser.add_argument("--memory-probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        memory_probe(args.memory_probe)
        return 0
    profile = PROFILES[args.profile]
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    name = "pipeline.json" if args.profile == "full" else f"pipeline-{args.profile}.json"
    # --merge: re-measure some sections, keep the others
    results: dict[str, Any] = (read_results(name) if args.merge else None) or {}
    results.update({"profile": args.profile, "machine": machine(), "spark_master": "local[2]",
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    spark = session()
    with tempfile.TemporaryDirectory(prefix="lime-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for section in wanted:
            fn = {"limit": bench_limit, "naive": bench_naive, "mllib": bench_mllib, "memory": bench_memory,
                  "scale": bench_scale}[section]
            results[section], seconds = timed(lambda fn=fn, section=section: fn(spark, profile, tmp / section))
            results.setdefault("section_seconds", {})[section] = seconds
            results["summary"] = summary(results)
            write_results(name, results)
    spark.stop()
    results["total_seconds"] = sum(results["section_seconds"].values())
    results["summary"] = summary(results)
    path = write_results(name, results)
    log(f"wrote {path}: {json.dumps(results['summary'])}")
    return 0


def summary(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "limit" in results:
        out["vs_raw_torch"] = round(results["limit"]["vs_raw_torch"], 3)
        if "vs_raw_torch_median" in results["limit"]:
            out["vs_raw_torch_median"] = round(results["limit"]["vs_raw_torch_median"], 3)
        if "vs_raw_torch_cold" in results["limit"]:
            out["vs_raw_torch_cold"] = round(results["limit"]["vs_raw_torch_cold"], 3)
    if "naive" in results:
        out["vs_naive_spark"] = round(results["naive"]["vs_naive_spark"], 2)
    if "mllib" in results:
        out["vs_mllib_als"] = round(results["mllib"]["vs_mllib_als"], 2)
        out["mllib_topk_identical"] = results["mllib"]["mllib_topk_identical"]
    if "memory" in results:
        out["memory_ratio_10x_users"] = round(results["memory"]["memory_ratio_10x_users"], 3)
    if "scale" in results:
        big = max(results["scale"], key=lambda r: r["users"] * r["items"])
        out["largest_scale_point"] = {"users": big["users"], "items": big["items"],
                                      "seconds_total": round(big["seconds_total"], 1)}
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
