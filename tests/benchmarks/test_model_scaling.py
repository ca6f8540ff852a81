"""benchmarks/model_scaling.py: its analytic FLOP counts and its summary (fair speedups, crossovers)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.model_scaling import crossover, lime_xor_flops, sasrec_sequence_flops, sasrec_user_flops, summarize
from lime_model.config import ModelConfig
from lime_model.model import FOLD_MIN_KEYS, FOLD_MIN_KEYS_SHARED, LimeModel, SASRecModel


def _cfg(model: str, layers: int = 2) -> ModelConfig:
    return ModelConfig(model=model, num_items=50, d_model=16, n_heads=2, n_links=4, n_layers=layers,
                       max_history=FOLD_MIN_KEYS + 1, dropout=0.0)


def _counted(fn: object, *args: object) -> int:
    """Matmul FLOPs torch counts for ``fn(*args)``; the math SDPA kernel, because the fused CPU
    kernel is not in FlopCounterMode's registry (it would count 0) and the math one runs as matmuls."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # (no no_grad: the counter's module hooks need autograd)
        fn(*args)  # type: ignore[operator]
    return counter.get_total_flops()


# Lengths on both sides of both fold thresholds (shared first-block links, per-user links).
LENGTHS = [3, FOLD_MIN_KEYS_SHARED - 1, FOLD_MIN_KEYS_SHARED, FOLD_MIN_KEYS + 1]


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("users", [1, 3])
@pytest.mark.parametrize("n", LENGTHS)
def test_lime_xor_flops_equal_what_torch_counts(layers: int, users: int, n: int) -> None:
    cfg = _cfg("lime-xor", layers)
    torch.manual_seed(0)
    model = LimeModel(cfg).eval()
    history = torch.randint(1, cfg.num_items, (users, n))
    assert lime_xor_flops(cfg, users, n) == _counted(model.encode_links, history, None)


@pytest.mark.parametrize("users", [1, 3])
@pytest.mark.parametrize("n", [3, FOLD_MIN_KEYS + 1])
def test_sasrec_flops_equal_what_torch_counts_with_the_masked_half(users: int, n: int) -> None:
    """The math kernel computes the masked upper half of the causal attention too, so torch's count
    matches ``causal_pairs=False``; the benchmark reports the causal half (the fused kernel skips
    masked blocks), which is smaller by exactly the masked pairs."""
    cfg = _cfg("sasrec")
    torch.manual_seed(0)
    model = SASRecModel(cfg).eval()
    history = torch.randint(1, cfg.num_items, (users, n))
    assert sasrec_user_flops(cfg, users, n, causal_pairs=False) == _counted(model.encode_user, history, None)
    assert sasrec_sequence_flops(cfg, users, n, causal_pairs=False) == _counted(
        model.encode_sequence, history, None)
    masked = (cfg.n_layers - 1) * 4 * users * cfg.d_model * (n * (n - 1) // 2)
    assert sasrec_user_flops(cfg, users, n) == sasrec_user_flops(cfg, users, n, causal_pairs=False) - masked


def _encoder_row(n: int, xor_ms: float, sasrec_ms: float) -> dict[str, float]:
    return {"history_length": n, "xor_ms_per_user": xor_ms, "sasrec_ms_per_user": sasrec_ms,
            "fair_speedup": sasrec_ms / xor_ms, "fair_speedup_median": 0.5 * sasrec_ms / xor_ms,
            "flop_ratio": 2.0 * n / 4096}


def test_crossover_is_the_shortest_length_from_which_on_lime_is_never_slower() -> None:
    rows = [_encoder_row(n, x, s) for n, x, s in [(1, 2.0, 1.0), (2, 1.0, 1.0), (4, 2.0, 1.0), (8, 1.0, 3.0),
                                                  (16, 1.0, 9.0)]]
    assert crossover(rows, "xor_ms_per_user", "sasrec_ms_per_user") == 8  # N=2 ties but N=4 is slower
    rows[-1]["xor_ms_per_user"] = 10.0
    assert crossover(rows, "xor_ms_per_user", "sasrec_ms_per_user") is None


def test_summary_has_the_fair_speedups_flop_ratios_and_crossovers() -> None:
    encoder = [_encoder_row(n, n / 1024, n * n / 2**20) for n in (1024, 2048, 4096, 8192)]
    training = [{"history_length": n, "xor_ms_per_target": 1.0, "sasrec_ms_per_target": 0.1} for n in (1, 2)]
    scoring = [{"candidates": c, "history_length": 4096, "lime_ms_per_user": 1.0 + c / 32768,
                "target_ms_per_user": c / 1024} for c in (1024, 32768)]
    summary = summarize(encoder, training, scoring, 4096)
    assert summary["fair_speedup_at_4096"] == 4.0 and summary["fair_speedup_at_8192"] == 8.0
    assert summary["flop_ratio_at_4096"] == 2.0 and summary["flop_ratio_at_8192"] == 4.0
    assert summary["speedup_over_flop_ratio_at_4096"] == 2.0
    assert summary["fair_speedup_median_at_4096"] == 2.0
    assert summary["xor_max_growth_per_doubling"] == 2.0
    assert summary["lime_time_ratio_32k_over_1k"] == round(2.0 / (1 + 1 / 32), 3)
    assert summary["target_time_ratio_32k_over_1k"] == 32.0
    assert summary["crossover_history_inference"] == 1024
    assert summary["crossover_history_training"] is None
