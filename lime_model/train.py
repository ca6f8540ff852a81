"""Training: next-item prediction with a logQ-corrected sampled softmax, AdamW, early stopping.

Every model is trained under the same protocol (``lime_model.data``): per
epoch each user contributes up to ``prefixes_per_user`` history prefixes (one
user representation per prefix); the candidate set of a batch is its own
targets (in-batch negatives) plus ``num_negatives`` items drawn uniformly from
the catalogue; logits are corrected by ``-log`` of each candidate's expected
count in that set (popularity-proportional for in-batch, uniform for sampled)
and accidental hits are masked.  The learning rate warms up linearly, then
follows a cosine down to ``min_lr_ratio`` of its peak at the last planned
epoch.  After every epoch the model is ranked on the validation split (full
catalogue); the best epoch by NDCG@10 is kept and training stops after
``patience`` epochs without improvement or when the CPU-time budget is spent.
The test split is never looked at here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.data import BUCKET_BATCHES, Batch, LeaveOneOutSplit, prefix_batches
from lime_model.evaluate import evaluate_split
from lime_model.model import create_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (everything that is not the network's shape).

    cpu_budget_s: stop after this much process CPU time (all threads), checked every step.
    """

    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    prefixes_per_user: int = 32
    num_negatives: int = 512
    patience: int = 10
    seed: int = 0
    cpu_budget_s: float = 14 * 60.0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "prefixes_per_user", "patience", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.cpu_budget_s > 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, cpu_budget_s > 0: {self}")


# Per-model settings chosen on the ML-100K validation split (best validation NDCG@10 over a
# small grid: dropout {0.1, 0.2} x time gaps {off, on} x lr {2e-3, 4e-3}, then depth {2, 3} for
# both attention models, and 32 vs 64 links; docs/model.md), never on test.  lime-mha reuses the
# lime-xor settings (not tuned on its own).  ModelConfig's own n_layers default (2) stays what the
# speed benchmarks and synthetic checkpoints use.
_LIME = {"model": {"dropout": 0.1, "use_time_gaps": False, "n_layers": 3}, "train": {"epochs": 30, "lr": 2e-3}}
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "lime-xor": _LIME,
    "lime-mha": _LIME,
    "full-attention": {"model": {"dropout": 0.1, "use_time_gaps": True, "n_layers": 3},
                       "train": {"epochs": 20, "lr": 4e-3}},
    "popularity": {"model": {}, "train": {}},
}


def default_configs(model: str, num_items: int, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """The documented defaults for ``model``, with ``overrides`` (None values ignored) applied to
    whichever of the two configs has that field."""
    if model not in DEFAULTS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(DEFAULTS)}")
    model_kw = {"model": model, "num_items": num_items, **DEFAULTS[model]["model"]}
    train_kw = dict(DEFAULTS[model]["train"])
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in model_fields:
            model_kw[key] = value
        elif key in train_fields:
            train_kw[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return ModelConfig(**model_kw), TrainConfig(**train_kw)


@dataclass
class TrainResult:
    """The best model (eval mode) and how it was reached."""

    model: nn.Module
    best_epoch: int
    valid_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0
    stopped_by: str = "epochs"


def sampled_softmax_loss(scores: Tensor, candidates: Tensor, n_in_batch: int, log_q: Tensor) -> Tensor:
    """scores ``(B, B+M)`` raw, candidates ``(B+M,)`` (first B are the row targets),
    log_q ``(B+M,)`` log expected count of each candidate -> mean cross-entropy."""
    logits = scores - log_q  # (B, B+M)
    rows = torch.arange(n_in_batch)
    accidental = candidates[None, :] == candidates[:n_in_batch, None]  # (B, B+M)
    accidental[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(accidental, float("-inf")), rows)


def steps_per_epoch(split: LeaveOneOutSplit, cfg: TrainConfig) -> int:
    """Number of batches :func:`prefix_batches` yields per epoch (an upper bound when length groups
    leave partial batches, exact otherwise)."""
    examples = sum(min(cfg.prefixes_per_user, len(items) - 1)
                   for items in split.train_items if len(items) > 1)
    group = cfg.batch_size * BUCKET_BATCHES
    full, rest = divmod(examples, group)
    return full * BUCKET_BATCHES + math.ceil(rest / cfg.batch_size)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_tensors(batch: Batch, use_times: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    hist = torch.from_numpy(batch.history)  # (B, n)
    times = torch.from_numpy(batch.times) if use_times else None  # (B, n)
    return hist, times, torch.from_numpy(batch.targets)  # (B,)


def train_model(split: LeaveOneOutSplit, model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainResult:
    """Train ``model_cfg`` on ``split`` (see the module docstring); popularity needs no training."""
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    counts = split.popularity(model_cfg.num_items)  # (V,)
    counts_t = torch.cat([torch.zeros(1, dtype=torch.int64), torch.from_numpy(counts)])  # (V+1,)
    model = create_model(model_cfg, popularity=counts_t)
    if model_cfg.model == "popularity":
        metrics = evaluate_split(model, split, "valid")
        log.info("popularity: valid %s", _fmt(metrics))
        return TrainResult(model.eval(), 0, metrics, [metrics])

    n_real = model_cfg.num_items - 1
    item_prob = torch.from_numpy(counts / max(counts.sum(), 1)).float()  # (V,) training frequency
    item_prob = torch.cat([torch.zeros(1), item_prob])  # (V+1,)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr)
    total_steps = train_cfg.epochs * steps_per_epoch(split, train_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total_steps, train_cfg))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    best_state, best_epoch, best_ndcg = copy.deepcopy(model.state_dict()), 0, -math.inf
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    steps, stale, stopped_by = 0, 0, "epochs"
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        seen_examples, seen_tokens, loss_sum, t_epoch = 0, 0, 0.0, time.perf_counter()
        for batch in prefix_batches(split, train_cfg.prefixes_per_user, train_cfg.batch_size,
                                    model_cfg.max_history, rng):
            hist, times, targets = _to_tensors(batch, model_cfg.use_time_gaps)
            negatives = torch.randint(1, n_real + 1, (train_cfg.num_negatives,), generator=gen)
            candidates = torch.cat([targets, negatives])  # (B+M,)
            log_q = torch.log(len(targets) * item_prob[candidates] + train_cfg.num_negatives / n_real)
            loss = sampled_softmax_loss(model.table_scores(hist, times, candidates), candidates,
                                        len(targets), log_q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            steps += 1
            seen_examples += len(targets)
            seen_tokens += int((hist != 0).sum())
            loss_sum += float(loss.detach()) * len(targets)
            if steps % train_cfg.log_every == 0:
                rate = time.perf_counter() - t_epoch
                log.info("epoch %d step %d loss %.4f  %.0f prefixes/s  %.0f tokens/s", epoch, steps,
                         loss_sum / seen_examples, seen_examples / rate, seen_tokens / rate)
            if time.process_time() - cpu0 > train_cfg.cpu_budget_s:
                stopped_by = "cpu_budget"
                break
        metrics = evaluate_split(model, split, "valid")
        metrics = {"epoch": epoch, "loss": loss_sum / max(seen_examples, 1), **metrics}
        history.append(metrics)
        log.info("epoch %d done: loss %.4f valid %s (%.0f s, cpu %.0f s)", epoch, metrics["loss"],
                 _fmt(metrics), time.perf_counter() - t_epoch, time.process_time() - cpu0)
        if metrics["ndcg@10"] > best_ndcg:
            best_ndcg, best_epoch, best_metrics, stale = metrics["ndcg@10"], epoch, metrics, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stopped_by == "cpu_budget":
            log.warning("CPU budget of %.0f s spent in epoch %d", train_cfg.cpu_budget_s, epoch)
            break
        if stale >= train_cfg.patience:
            stopped_by = "early_stopping"
            break
    model.load_state_dict(best_state)
    result = TrainResult(model.eval(), best_epoch, best_metrics, history,
                         cpu_seconds=time.process_time() - cpu0, wall_seconds=time.perf_counter() - wall0,
                         steps=steps, stopped_by=stopped_by)
    log.info("best epoch %d of %d (%s): valid %s; %.1f CPU-min, %.1f wall-min", best_epoch, len(history),
             stopped_by, _fmt(best_metrics), result.cpu_seconds / 60, result.wall_seconds / 60)
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50") if k in metrics)
