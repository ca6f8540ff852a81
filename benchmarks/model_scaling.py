"""Model scaling benchmark (``make bench``) -> ``benchmarks/results/model_scaling.json``.

Sweeps on the CPU this runs on, d=64, H=2, ell=32, 2 blocks, fp32, dropout 0:

1. **Inference: encoder time per user vs history length** N in {1, 2, ..., 8192}, eval mode,
   ``torch.inference_mode()``: LIME-XOR (``LimeModel.encode_links``: history -> L_P) against the
   SASRec skyline (``SASRecModel.encode_user``: causal self-attention over the history; its last
   block computes only the newest position's query, the one output that is read -- it skips its
   dead work as LIME-XOR skips the history update of its last block).  This is the fair speedup,
   the only one reported (from the fastest rounds, and from the median rounds).  Each call
   encodes ``min(max_users, tokens_per_batch // N)`` users of exactly N items.  Beside each row:
   the matmul FLOPs per history token of each model (:func:`lime_xor_flops`,
   :func:`sasrec_user_flops`), counted from the shapes of what each encoder executes.
2. **Training: forward + backward time per training target** at short N (train mode, dropout 0,
   256 users per step, the loss left out: a plain sum of the encoder output is backpropagated).
   SASRec trains every position of a sequence in one causal pass (``encode_sequence``: N targets
   per sequence); LIME-XOR encodes one prefix per user into L_P and trains ``target_window``
   targets on it -- here target_window=1, the default: one target per encoded prefix.
   The crossover history length (inference and training) is the shortest swept N from which on
   LIME-XOR is at least as fast as SASRec at every longer swept N (null if none).
3. **Scoring time per user vs candidate count** C in {1k, ..., 32k} at a fixed
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
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.model import HistoryEmbedding, HSTUBlock, LimeModel, SASRecModel
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
SHORT_LENGTHS = [2**i for i in range(7)]  # 1 .. 64
HISTORY_LENGTHS = SHORT_LENGTHS + [128 * 2**i for i in range(7)]  # 1 .. 8192
TRAINING_LENGTHS = [2**i for i in range(9)]  # 1 .. 256
CANDIDATE_COUNTS = [1024 * 2**i for i in range(6)]  # 1k .. 32k
NUM_ITEMS = 40_000


def attention_flops(queries: int, keys: int, width: int) -> int:
    """Q K^T and P V of ``queries`` x ``keys`` over ``width`` (summed over heads): ``4 q k w``."""
    return 4 * queries * keys * width


def lime_xor_flops(cfg: ModelConfig, users: int, n: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one ``LimeModel.encode_links`` call (lime-xor) on
    ``users`` histories of ``n`` items, as it executes them (LayerNorm, softmax, SiLU not counted).

    With ``m = ell`` links, ``B = users``, ``b_l`` = rows of distinct links (1 in the first block,
    where the links are the parameter L, shared by every user; ``B`` after it, or 1 if B = 1):

    * every block but the last (``XorBlock``): link U, Q, K, V ``8 b_l m d^2``; links <- history
      (:func:`history_attention_flops`); the history's U ``2 B n d^2`` and, with shared links,
      history <- links as one logits GEMM ``2 B n d (H m)`` and one block-diagonal value GEMM
      ``2 B n (H m) d`` (+ folding W_q into the link keys ``2 m d^2 + 2 m d`` once), else the
      history's Q ``2 B n d^2`` and the attention ``4 B n m d``; outputs ``2 B (m + n) d^2``;
    * the last block (``ReadBlock``): link U, Q ``4 b_l m d^2``, links <- history,
      the links' output ``2 B m d^2`` -- the history's update is dead work and never runs.
    """
    d, h, m, b = cfg.d_model, cfg.n_heads, cfg.n_links, users
    flops = 0
    for i in range(cfg.n_layers):
        rows = 1 if i == 0 or b == 1 else b  # distinct link rows entering block i
        last = i == cfg.n_layers - 1
        flops += (4 if last else 8) * rows * m * d * d + 2 * b * m * d * d  # link projections, output
        flops += history_attention_flops(cfg, b, rows == 1, n)
        if last:
            break
        flops += 2 * b * n * d * d * 2  # the history's U and its output projection
        if rows == 1:  # history <- links, the queries folded into the shared link keys
            flops += 2 * m * d * d + 2 * m * d + 2 * b * n * d * h * m * 2
        else:
            flops += 2 * b * n * d * d + attention_flops(b * n, m, d)
    return flops


def history_attention_flops(cfg: ModelConfig, users: int, shared: bool, n: int) -> int:
    """Matmul FLOPs of ``attend_history`` for ``ell`` link queries per user over ``n`` keys.

    Folded (``HSTUBlock.folds``): widen the queries ``2 q m d^2`` (``q`` = 1 if shared, else B),
    one attention of ``H m`` queries of width ``d`` over the normed history ``4 B H m n d``, then
    ``W_v`` ``2 B m d^2``.  Else: the history's K and V ``4 B n d^2``, attention ``4 B m n d``.
    """
    d, h, m, b = cfg.d_model, cfg.n_heads, cfg.n_links, users
    if folds(cfg, m, n, shared):
        return 2 * (1 if shared else b) * m * d * d + attention_flops(b * h * m, n, d) + 2 * b * m * d * d
    return 4 * b * n * d * d + attention_flops(b * m, n, d)


def folds(cfg: ModelConfig, queries: int, n: int, shared: bool) -> bool:
    """``HSTUBlock.folds`` for ``cfg`` (the FLOP counts follow the path the model takes)."""
    return HSTUBlock(cfg).folds(queries, n, shared=shared)


def sasrec_user_flops(cfg: ModelConfig, users: int, n: int, causal_pairs: bool = True) -> int:
    """Matmul FLOPs of one ``SASRecModel.encode_user`` call on ``users`` histories of ``n`` items.

    Every block but the last: U, Q, K, V ``8 B n d^2``, causal attention over ``n (n + 1) / 2``
    (query, key) pairs ``4 B d n (n + 1) / 2`` (``causal_pairs=False``: the full ``n^2``, what a
    kernel that computes the masked half too -- and FlopCounterMode -- counts), output ``2 B n d^2``;
    the last block: the newest position's U, Q ``4 B d^2``, its attention over the history
    (:func:`history_attention_flops` with one query), its output ``2 B d^2``.
    """
    d, b = cfg.d_model, users
    pairs = n * (n + 1) // 2 if causal_pairs else n * n
    inner = 8 * b * n * d * d + 4 * b * pairs * d + 2 * b * n * d * d
    last = 4 * b * d * d + 2 * b * d * d + history_attention_flops(replace(cfg, n_links=1), b, b == 1, n)
    return (cfg.n_layers - 1) * inner + last


def sasrec_sequence_flops(cfg: ModelConfig, users: int, n: int, causal_pairs: bool = True) -> int:
    """Forward matmul FLOPs of ``SASRecModel.encode_sequence`` (training: every position, every
    block): ``n_layers (10 B n d^2 + 4 B d n (n + 1) / 2)`` (``causal_pairs=False``: ``n^2``)."""
    d, b = cfg.d_model, users
    pairs = n * (n + 1) // 2 if causal_pairs else n * n
    return cfg.n_layers * (10 * b * n * d * d + 4 * b * pairs * d)


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


def _minima(times: list[float], per: int) -> tuple[float, float]:
    """Round times (s) -> (fastest, median) in ms per ``per`` (users or targets)."""
    return 1e3 * min(times) / per, 1e3 * statistics.median(times) / per


def bench_encoders(lengths: list[int], tokens_per_batch: int, max_users: int,
                   rounds: int) -> list[dict[str, float]]:
    """Inference: ms per user of LIME-XOR ``encode_links`` and SASRec ``encode_user`` (fair: its
    last block computes only the newest query), with each model's matmul FLOPs per history token."""
    torch.manual_seed(0)
    xor = LimeModel(_config("lime-xor", max(lengths))).eval()
    sasrec = SASRecModel(_config("sasrec", max(lengths))).eval()
    users_at = {n: max(1, min(max_users, tokens_per_batch // n)) for n in lengths}
    histories = {n: torch.randint(1, NUM_ITEMS, (users_at[n], n)) for n in lengths}
    variants: dict[str, Callable[[Tensor], object]] = {
        "xor": lambda h: xor.encode_links(h, None),
        "sasrec": lambda h: sasrec.encode_user(h, None)}
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
        row: dict[str, float] = {"history_length": n, "users_per_call": users}
        for name in variants:
            row[f"{name}_ms_per_user"], row[f"{name}_ms_per_user_median"] = _minima(
                all_times[f"{n}/{name}"], users)
        row["xor_flops_per_token"] = lime_xor_flops(xor.cfg, users, n) / (users * n)
        row["sasrec_flops_per_token"] = sasrec_user_flops(sasrec.cfg, users, n) / (users * n)
        row["flop_ratio"] = row["sasrec_flops_per_token"] / row["xor_flops_per_token"]
        row["fair_speedup"] = row["sasrec_ms_per_user"] / row["xor_ms_per_user"]
        # Minima favour the shorter call on a loaded machine (a 200 ms skyline call is rarely
        # undisturbed, a 20 ms LIME call often is): the medians' ratio is reported beside them.
        row["fair_speedup_median"] = row["sasrec_ms_per_user_median"] / row["xor_ms_per_user_median"]
        rows.append(row)
        print(f"encoder N={n:5d} users={users:3d}  lime-xor {row['xor_ms_per_user']:8.3f} ms/user "
              f"({row['xor_flops_per_token'] / 1e3:6.1f} kFLOP/token)  sasrec {row['sasrec_ms_per_user']:9.3f} "
              f"ms/user ({row['sasrec_flops_per_token'] / 1e3:7.1f} kFLOP/token)  fair speedup "
              f"{row['fair_speedup']:5.2f}x  FLOP ratio {row['flop_ratio']:5.2f}", flush=True)
    return rows


def bench_training(lengths: list[int], users: int, rounds: int) -> list[dict[str, float]]:
    """Training: forward + backward ms per training target, ``users`` sequences per step, train
    mode, dropout 0, the loss replaced by a plain sum of the encoder output.  SASRec: N targets per
    sequence (``encode_sequence``); LIME-XOR: one encoded prefix per user, target_window=1."""
    torch.manual_seed(0)
    xor = LimeModel(_config("lime-xor", max(lengths))).train()
    sasrec = SASRecModel(_config("sasrec", max(lengths))).train()
    items = {n: torch.randint(1, NUM_ITEMS, (users, n)) for n in lengths}

    def step(encode: Callable[[Tensor, None], Tensor], batch: Tensor) -> None:
        encode(batch, None).sum().backward()  # gradients accumulate: harmless, never stepped

    variants: dict[str, Callable[[Tensor], None]] = {
        "xor": lambda h: step(xor.encode_links, h), "sasrec": lambda h: step(sasrec.encode_sequence, h)}
    fns = {f"{n}/{name}": (lambda fn=fn, h=items[n]: fn(h)) for name, fn in variants.items() for n in lengths}
    all_times = time_round_robin(fns, rounds)
    rows = []
    for n in lengths:
        row: dict[str, float] = {"history_length": n, "users_per_step": users,
                                 "xor_targets_per_step": users, "sasrec_targets_per_step": users * n}
        for name in variants:
            row[f"{name}_ms_per_target"], row[f"{name}_ms_per_target_median"] = _minima(
                all_times[f"{n}/{name}"], int(row[f"{name}_targets_per_step"]))
        row["xor_forward_flops_per_target"] = lime_xor_flops(xor.cfg, users, n) / users
        row["sasrec_forward_flops_per_target"] = sasrec_sequence_flops(sasrec.cfg, users, n) / (users * n)
        row["xor_speedup_per_target"] = row["sasrec_ms_per_target"] / row["xor_ms_per_target"]
        rows.append(row)
        print(f"training N={n:4d}  lime-xor {row['xor_ms_per_target']:8.4f} ms/target  sasrec "
              f"{row['sasrec_ms_per_target']:8.4f} ms/target  ({row['xor_speedup_per_target']:5.3f}x)", flush=True)
    return rows


def crossover(rows: list[dict[str, float]], xor_key: str, sasrec_key: str) -> int | None:
    """The shortest swept history length from which on LIME-XOR is at least as fast as SASRec at
    every longer swept length (None if it is slower at the longest)."""
    found = None
    for row in sorted(rows, key=lambda r: r["history_length"], reverse=True):
        if row[xor_key] > row[sasrec_key]:
            break
        found = int(row["history_length"])
    return found


def bench_scoring(counts: list[int], history_length: int, lime_users: int, target_users: int,
                  tokens_per_batch: int, rounds: int) -> list[dict[str, float]]:
    torch.manual_seed(0)
    lime = LimeModel(_config("lime-xor", history_length)).eval()
    target = TargetAttentionScorer(_config("sasrec", history_length)).eval()
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


def summarize(encoder: list[dict[str, float]], training: list[dict[str, float]],
              scoring: list[dict[str, float]], scoring_history: int) -> dict[str, float | int | None]:
    by_n = {r["history_length"]: r for r in encoder}
    growth = [by_n[2 * n]["xor_ms_per_user"] / by_n[n]["xor_ms_per_user"]
              for n in by_n if n >= 1024 and 2 * n in by_n]
    nan = float("nan")
    summary: dict[str, float] = {}
    for n in (4096, 8192):
        summary[f"fair_speedup_at_{n}"] = by_n[n]["fair_speedup"] if n in by_n else nan
        summary[f"flop_ratio_at_{n}"] = by_n[n]["flop_ratio"] if n in by_n else nan
        summary[f"fair_speedup_median_at_{n}"] = by_n[n]["fair_speedup_median"] if n in by_n else nan
    for n in (4096, 8192):  # the target: the speedup at least 0.8x the FLOP ratio
        summary[f"speedup_over_flop_ratio_at_{n}"] = (summary[f"fair_speedup_at_{n}"]
                                                      / summary[f"flop_ratio_at_{n}"])
    summary.update({
        "xor_max_growth_per_doubling": max(growth) if growth else nan,
        "lime_time_ratio_32k_over_1k": _ratio(scoring, "lime_ms_per_user", scoring_history),
        "target_time_ratio_32k_over_1k": _ratio(scoring, "target_ms_per_user", scoring_history),
    })
    for n in sorted({r["history_length"] for r in scoring} - {scoring_history}):
        summary[f"lime_time_ratio_32k_over_1k_at_history_{n}"] = _ratio(scoring, "lime_ms_per_user", n)
    out: dict[str, float | int | None] = {
        k: round(v, 3) if math.isfinite(v) else None for k, v in summary.items()}  # JSON has no NaN
    out["crossover_history_inference"] = crossover(encoder, "xor_ms_per_user", "sasrec_ms_per_user")
    out["crossover_history_training"] = crossover(training, "xor_ms_per_target", "sasrec_ms_per_target")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default {RESULT} ({RESULT.stem}-quick.json with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens-per-batch", type=int, default=16_384)
    parser.add_argument("--max-users", type=int, default=256,
                        help="at most this many users per encoder call (short histories)")
    parser.add_argument("--training-users", type=int, default=256, help="sequences per training step")
    parser.add_argument("--scoring-history", type=int, default=4096,
                        help="history length N of the scoring sweep (the summary's ratio)")
    parser.add_argument("--extra-scoring-history", type=int, nargs="*", default=[1024],
                        help="further history lengths swept for transparency")
    parser.add_argument("--lime-users", type=int, default=128,
                        help="users per LIME scoring call (one GEMM; encoded tokens_per_batch at a time)")
    parser.add_argument("--target-users", type=int, default=2, help="users per target-attention call")
    parser.add_argument("--quick", action="store_true", help="tiny sweep (smoke test), not for results")
    return parser


def settings(args: argparse.Namespace, rounds: int, scoring_history: int, seconds: float) -> dict[str, object]:
    return {"d_model": 64, "n_heads": 2, "n_links": 32, "n_layers": 2, "dtype": "float32",
            "rounds": rounds, "statistic": "min over rounds (median also reported)",
            "tokens_per_batch": args.tokens_per_batch, "max_users_per_encoder_call": args.max_users,
            "training_users_per_step": args.training_users, "training_target_window": 1,
            "training_loss": "sum of the encoder output (loss left out), train mode, dropout 0",
            "flops": "matmul FLOPs (2 per multiply-add) per history token, from the shapes each "
                     "encoder executes (lime_xor_flops, sasrec_user_flops)",
            "scoring_history_length": scoring_history,
            "extra_scoring_history_lengths": [] if args.quick else args.extra_scoring_history,
            "lime_users_per_call": args.lime_users, "target_users_per_call": args.target_users,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "quick": args.quick,
            "glibc_keeps_freed_memory": keep_freed_memory(), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths, training_lengths, counts, rounds = HISTORY_LENGTHS, TRAINING_LENGTHS, CANDIDATE_COUNTS, args.rounds
    if args.quick:
        lengths, training_lengths, counts, rounds = [1, 16, 128, 256], [1, 16], [1024, 2048], 2
    out = args.out or (RESULT.with_name(f"{RESULT.stem}-quick.json") if args.quick else RESULT)
    started = time.perf_counter()
    training = bench_training(training_lengths, args.training_users, rounds)
    with torch.inference_mode():
        encoder = bench_encoders(lengths, args.tokens_per_batch, args.max_users, rounds)
        scoring_history = args.scoring_history if not args.quick else 256
        scoring = []
        for n in [scoring_history, *([] if args.quick else args.extra_scoring_history)]:
            scoring += bench_scoring(counts, n, args.lime_users, args.target_users,
                                     args.tokens_per_batch, rounds)
    result = {
        "summary": summarize(encoder, training, scoring, scoring_history),
        "settings": settings(args, rounds, scoring_history, time.perf_counter() - started),
        "encoder": encoder,
        "training": training,
        "scoring": scoring,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
