"""Model scaling benchmark (``make bench``) -> ``benchmarks/results/model_scaling.json``.

Two sweeps on the CPU this runs on, d=64, H=2, ell=32, 2 blocks, fp32, eval mode,
``torch.inference_mode()``:

1. **Encoder time per user vs history length** N in {128, ..., 8192}: LIME-XOR
   (``encode_links``: history -> L_P) against the full-attention skyline
   (``encode_user``: causal SDPA over the history, every block).  Each call
   encodes ``max(1, tokens_per_batch // N)`` users of exactly N items.  For transparency
   a third column times the skyline with its last block cut to the one query that is read
   (``full_last_query``); the summary's speedups are against the plain skyline.
2. **Scoring time per user vs candidate count** C in {1k, ..., 32k} at a fixed
   history length: LIME with cached candidate tables (encode the histories
   ``tokens_per_batch`` at a time, ``V(L_P)``, then one GEMM for all ``lime_users``
   users against the folded ``(C, ell*d)`` table -- with fewer users per GEMM it is
   bound by reading the table; the tables are built offline and not timed) against
   target attention (each candidate attends to the user's history: ``C x N``
   attention per user, then a dot product).  Both include their user-side work; top-K is not included.  The
   summary ratio is at N=4096; N=1024 is swept too, because the ratio depends on
   N: LIME costs ``O(ell*d)`` per candidate (the GEMM), so its curve is flat only
   while the per-user history encoding dominates.

Memory: PyTorch's CPU allocator hands every large tensor back to glibc, which by
default returns big blocks to the OS and page-faults them in again on the next
call; for the short, allocation-heavy calls timed here that was ~40% of the
LIME-XOR time (and ~10% of the skyline's).  Like the usual advice for PyTorch
CPU inference (jemalloc/tcmalloc), the benchmark asks glibc to keep freed memory
(``mallopt``: mmap threshold 32 MiB, no trimming) -- for every variant alike.
The same can be had in any process with ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment.

Timings are noisy on a shared 2-core machine, so every variant at every size of a
sweep is timed once per round (round-robin), several rounds, and each reports the
fastest round (timeit's advice: the minimum is the least disturbed run) as
well as the median; the summary uses the minima.  Interleaving the sizes, not only
the variants, matters for the ratios between sizes (growth per doubling, 32k over 1k):
a slow spell of the machine then slows every size alike instead of one of them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.model import FullAttentionModel, HistoryEmbedding, HSTUBlock, LimeModel
from lime_model.scoring import fold_candidates, score_folded


def keep_freed_memory() -> bool:
    """glibc only: stop returning freed blocks to the OS (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(
        libc.mallopt(m_trim_threshold, 1 << 30))


RESULT = Path(__file__).parent / "results" / "model_scaling.json"
HISTORY_LENGTHS = [128 * 2**i for i in range(7)]  # 128 .. 8192
CANDIDATE_COUNTS = [1024 * 2**i for i in range(6)]  # 1k .. 32k
NUM_ITEMS = 40_000


class TargetAttentionScorer(nn.Module):
    """Baseline interaction: every candidate attends to the user's history (one HSTU-style block,
    ``C x N`` attention per user), score = <output, Emb(c)>.  Only used here."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = HistoryEmbedding(cfg)
        self.block = HSTUBlock(cfg)

    def forward(self, history: Tensor, cand_idx: Tensor) -> Tensor:
        """history ``(B, N)``, cand_idx ``(C,)`` -> scores ``(B, C)``."""
        x_e, _ = self.embed(history, None)  # (B, N, d)
        k, v = self.block.project(x_e, "kv")  # (B, N, d) x 2
        t = self.embed.item(cand_idx)[None]  # (1, C, d)
        u, q = self.block.project(t, "uq")  # (1, C, d) x 2
        batch = history.shape[0]
        attn = F.scaled_dot_product_attention(self.block.heads(q).expand(batch, -1, -1, -1),
                                              self.block.heads(k), self.block.heads(v))  # (B, H, C, d_h)
        out = self.block.output(t, u, self.block.merge(attn))  # (B, C, d)
        return (out * t).sum(-1)  # (B, C)


def full_attention_last_query(model: FullAttentionModel, history: Tensor) -> Tensor:
    """The skyline's user vector with its last block reduced to the one query that is read (the
    newest position): the analogue of LIME-XOR skipping the history update in its last block.
    history ``(B, N)`` without padding -> ``(B, d)``.  Reported for transparency only."""
    x, _ = model.embed(history, None)  # (B, N, d)
    for block in model.blocks[:-1]:
        u, q, k, v = block.project(x)  # (B, N, d) x 4
        attn = F.scaled_dot_product_attention(block.heads(q), block.heads(k), block.heads(v), is_causal=True)
        x = block.output(x, u, block.merge(attn))  # (B, N, d)
    last = model.blocks[-1]
    k, v = last.project(x, "kv")  # (B, N, d) x 2
    u, q = last.project(x[:, -1:], "uq")  # (B, 1, d) x 2
    attn = F.scaled_dot_product_attention(last.heads(q), last.heads(k), last.heads(v))  # (B, H, 1, d_h)
    return model.final_norm(last.output(x[:, -1:], u, last.merge(attn))[:, 0])  # (B, d)


def time_round_robin(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Warm every function up once, then time them in alternation for ``rounds`` rounds (s)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _config(model: str, max_history: int) -> ModelConfig:
    return ModelConfig(model=model, num_items=NUM_ITEMS, d_model=64, n_heads=2, n_links=32, n_layers=2,
                       max_history=max_history, dropout=0.0)


def bench_encoders(lengths: list[int], tokens_per_batch: int, rounds: int) -> list[dict[str, float]]:
    torch.manual_seed(0)
    xor = LimeModel(_config("lime-xor", max(lengths))).eval()
    full = FullAttentionModel(_config("full-attention", max(lengths))).eval()
    users_at = {n: max(1, tokens_per_batch // n) for n in lengths}
    histories = {n: torch.randint(1, NUM_ITEMS, (users_at[n], n)) for n in lengths}
    variants: dict[str, Callable[[Tensor], object]] = {
        "xor": lambda h: xor.encode_links(h, None),
        "full": lambda h: full.encode_user(h, None),
        "full_last_query": lambda h: full_attention_last_query(full, h)}
    # Every length in every round: a slow spell of the machine then hits all lengths alike
    # instead of skewing one of them (and with it the growth per doubling).  Variant-major
    # order, so that each LIME-XOR call follows another LIME-XOR call, not the skyline's
    # large attention (whose cache and allocator footprint made the XOR minima wander).
    fns = {f"{n}/{name}": (lambda fn=fn, h=histories[n]: fn(h))
           for name, fn in variants.items() for n in lengths}
    all_times = time_round_robin(fns, rounds)
    rows = []
    for n in lengths:
        users = users_at[n]
        times = {name: all_times[f"{n}/{name}"] for name in ("xor", "full", "full_last_query")}
        row = {"history_length": n, "users_per_call": users}
        for name, ts in times.items():
            row[f"{name}_ms_per_user"] = 1e3 * min(ts) / users
            row[f"{name}_ms_per_user_median"] = 1e3 * statistics.median(ts) / users
        row["speedup"] = row["full_ms_per_user"] / row["xor_ms_per_user"]
        row["speedup_vs_full_last_query"] = row["full_last_query_ms_per_user"] / row["xor_ms_per_user"]
        rows.append(row)
        print(f"encoder N={n:5d} users={users:3d}  lime-xor {row['xor_ms_per_user']:8.3f} ms/user  "
              f"full {row['full_ms_per_user']:9.3f} ms/user  speedup {row['speedup']:5.1f}x  "
              f"(vs last-query skyline {row['speedup_vs_full_last_query']:5.1f}x)", flush=True)
    return rows


def bench_scoring(counts: list[int], history_length: int, lime_users: int, target_users: int,
                  tokens_per_batch: int, rounds: int) -> list[dict[str, float]]:
    torch.manual_seed(0)
    lime = LimeModel(_config("lime-xor", history_length)).eval()
    target = TargetAttentionScorer(_config("full-attention", history_length)).eval()
    cfg = lime.cfg
    fns: dict[str, Callable[[], object]] = {}
    for c in counts:
        cand = torch.randint(1, NUM_ITEMS, (c,))
        tables = lime.candidate_tables(cand)  # offline, cached per model version
        folded = fold_candidates(tables.link_weights, tables.cand_vec, cfg.n_heads, cfg.n_links)  # (C, ell*d)
        h_lime = torch.randint(1, NUM_ITEMS, (lime_users, history_length))
        h_target = h_lime[:target_users]

        def lime_scores(h: Tensor = h_lime, f: Tensor = folded, b: Tensor = tables.bias) -> Tensor:
            # Encode in calls of the encoder sweep's size, then score all users in one GEMM:
            # the pipeline, too, encodes and scores in separately sized batches.
            step = max(1, tokens_per_batch // h.shape[1])
            values = torch.cat([lime.link_values(lime.encode_links(h[i:i + step], None))
                                for i in range(0, len(h), step)])  # (B, ell, d)
            return score_folded(values, f, b)  # (B, C)

        fns[f"{c}/lime"] = lime_scores
        fns[f"{c}/target"] = lambda h=h_target, k=cand: target(h, k)
    all_times = time_round_robin(fns, rounds)  # every count in every round, as for the encoders
    rows = []
    for c in counts:
        times = {name: all_times[f"{c}/{name}"] for name in ("lime", "target")}
        row = {"candidates": c, "history_length": history_length,
               "lime_ms_per_user": 1e3 * min(times["lime"]) / lime_users,
               "lime_ms_per_user_median": 1e3 * statistics.median(times["lime"]) / lime_users,
               "target_ms_per_user": 1e3 * min(times["target"]) / target_users,
               "target_ms_per_user_median": 1e3 * statistics.median(times["target"]) / target_users}
        rows.append(row)
        print(f"scoring C={c:6d} N={history_length}  lime {row['lime_ms_per_user']:8.3f} ms/user  "
              f"target attention {row['target_ms_per_user']:9.3f} ms/user", flush=True)
    return rows


def _ratio(rows: list[dict[str, float]], key: str, history_length: int) -> float:
    by_c = {r["candidates"]: r for r in rows if r["history_length"] == history_length}
    if not {1024, 32768} <= set(by_c):
        return float("nan")
    return by_c[32768][key] / by_c[1024][key]


def summarize(encoder: list[dict[str, float]], scoring: list[dict[str, float]],
              scoring_history: int) -> dict[str, float]:
    by_n = {r["history_length"]: r for r in encoder}
    growth = [by_n[2 * n]["xor_ms_per_user"] / by_n[n]["xor_ms_per_user"]
              for n in by_n if n >= 1024 and 2 * n in by_n]
    nan = float("nan")
    summary = {
        "xor_vs_full_speedup_at_4096": by_n[4096]["speedup"] if 4096 in by_n else nan,
        "xor_vs_full_speedup_at_8192": by_n[8192]["speedup"] if 8192 in by_n else nan,
        "xor_max_growth_per_doubling": max(growth) if growth else nan,
        "lime_time_ratio_32k_over_1k": _ratio(scoring, "lime_ms_per_user", scoring_history),
        "target_time_ratio_32k_over_1k": _ratio(scoring, "target_ms_per_user", scoring_history),
        "xor_vs_full_last_query_speedup_at_4096": (by_n[4096]["speedup_vs_full_last_query"]
                                                   if 4096 in by_n else nan),
    }
    for n in sorted({r["history_length"] for r in scoring} - {scoring_history}):
        summary[f"lime_time_ratio_32k_over_1k_at_history_{n}"] = _ratio(scoring, "lime_ms_per_user", n)
    return {k: round(v, 3) if math.isfinite(v) else None for k, v in summary.items()}  # JSON has no NaN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens-per-batch", type=int, default=16_384)
    parser.add_argument("--scoring-history", type=int, default=4096,
                        help="history length N of the scoring sweep (the summary's ratio)")
    parser.add_argument("--extra-scoring-history", type=int, nargs="*", default=[1024],
                        help="further history lengths swept for transparency")
    parser.add_argument("--lime-users", type=int, default=128,
                        help="users per LIME scoring call (one GEMM; encoded tokens_per_batch at a time)")
    parser.add_argument("--target-users", type=int, default=2, help="users per target-attention call")
    parser.add_argument("--quick", action="store_true", help="tiny sweep (smoke test), not for results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    malloc_tuned = keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths, counts, rounds = HISTORY_LENGTHS, CANDIDATE_COUNTS, args.rounds
    if args.quick:
        lengths, counts, rounds = [128, 256], [1024, 2048], 2
    started = time.perf_counter()
    with torch.inference_mode():
        encoder = bench_encoders(lengths, args.tokens_per_batch, rounds)
        scoring_history = args.scoring_history if not args.quick else 256
        scoring = []
        for n in [scoring_history, *([] if args.quick else args.extra_scoring_history)]:
            scoring += bench_scoring(counts, n, args.lime_users, args.target_users,
                                     args.tokens_per_batch, rounds)
    result = {
        "summary": summarize(encoder, scoring, scoring_history),
        "settings": {"d_model": 64, "n_heads": 2, "n_links": 32, "n_layers": 2, "dtype": "float32",
                     "rounds": rounds, "statistic": "min over rounds (median also reported)",
                     "tokens_per_batch": args.tokens_per_batch, "scoring_history_length": scoring_history,
                     "extra_scoring_history_lengths": [] if args.quick else args.extra_scoring_history,
                     "lime_users_per_call": args.lime_users, "target_users_per_call": args.target_users,
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "quick": args.quick,
                     "glibc_keeps_freed_memory": malloc_tuned,
                     "seconds": round(time.perf_counter() - started, 1)},
        "encoder": encoder,
        "scoring": scoring,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
