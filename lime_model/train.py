"""Training: next-item prediction with a logQ-corrected sampled softmax, AdamW, early stopping.

Every model is trained under one protocol (``lime_model.data``).  LIME models: per epoch each
user contributes up to ``prefixes_per_user`` history prefixes, one user representation per
prefix, each with the next ``target_window`` items as targets.  SASRec: every position of a
whole sequence window in one causal pass, the next item as each position's target.  The
candidate set of a batch is its distinct targets (in-batch negatives) plus ``num_negatives``
items drawn uniformly from the catalogue; logits are corrected by ``-log`` of each candidate's
expected count in that set, and a row's other targets and accidental hits are masked
(:func:`multi_target_loss`).  The learning rate warms up linearly, then follows a cosine down to
``min_lr_ratio`` of its peak at the last planned epoch or at the end of the CPU budget,
whichever comes first.  After every epoch the model is ranked on a fixed sample of validation
users (full catalogue); the best epoch by NDCG@10 is kept and training stops after ``patience``
epochs without improvement or when the CPU-time budget is spent.  The test split is never
looked at here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.data import (
    Batch,
    LeaveOneOutSplit,
    plan_prefixes,
    plan_sequences,
    prefix_batch,
    sequence_batch,
)
from lime_model.evaluate import evaluate_split
from lime_model.model import RankingModel, SASRecModel, create_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (everything that is not the network's shape).

    cpu_budget_s: stop after this much process CPU time (all threads), checked every step.
    target_window: LIME models learn to predict this many items after each prefix (1 = next item).
    valid_users: epochs are compared on a fixed random sample of this many validation users
                 (0 = all): ranking the full catalogue for every user of a large dataset after every
                 epoch would spend much of the budget on model selection.
    """

    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    prefixes_per_user: int = 32
    target_window: int = 1
    valid_users: int = 10_000
    num_negatives: int = 512
    patience: int = 10
    seed: int = 0
    cpu_budget_s: float = 14 * 60.0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "prefixes_per_user", "target_window", "patience", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_negatives", "valid_users"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.cpu_budget_s > 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, cpu_budget_s > 0: {self}")


# Per-model settings, chosen on validation NDCG@10 only (docs/model.md, "How the defaults were
# chosen"), never on test.  lime-xor: 3 blocks and lr from the ML-100K grid of earlier sessions;
# 4 links from the Amazon Sports grid (links {2, 4, 8, 32} x dropout {0.1, 0.3, 0.5}): fewer links
# cost less per epoch on short histories, and 4 keep more of the model's rank for long histories
# than 2 (which tie on Amazon Sports).  The newest history token added to the links
# (newest_to_links) with V and W_o starting at the identity let the model remember item-to-item
# transitions as SASRec does; it then overfits sooner, so dropout 0.5 (SASRec's) beats 0.3 and 0.4.
# sasrec: its own small grid, dropout {0.2, 0.5} x batch {32, 128} sequences on both datasets, plus
# 3 blocks with time gaps and lr 4e-3 on Amazon Sports (no better).  lime-mha reuses the lime-xor
# settings (not tuned on its own).  ModelConfig's own defaults (2 blocks, 32 links, no newest
# token) stay what the speed benchmarks and synthetic checkpoints use.
_LIME = {"model": {"dropout": 0.5, "use_time_gaps": False, "n_layers": 3, "n_links": 4, "newest_to_links": True},
         "train": {"epochs": 30, "lr": 2e-3}}
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "lime-xor": _LIME,
    "lime-mha": _LIME,
    "sasrec": {"model": {"dropout": 0.5, "use_time_gaps": False, "n_layers": 2},
               "train": {"epochs": 200, "lr": 2e-3, "batch_size": 32}},
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

    model: RankingModel
    best_epoch: int
    valid_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0
    stopped_by: str = "epochs"


@dataclass(frozen=True)
class Candidates:
    """A batch's candidate set: items ``(U+M,)`` = the batch's distinct targets (sorted) then ``M``
    uniform negatives; log_q ``(U+M,)`` = log of each one's expected count in that set."""

    items: Tensor
    log_q: Tensor
    n_distinct: int


def in_batch_candidates(targets: Tensor, negatives: Tensor, item_prob: Tensor, n_real: int) -> Candidates:
    """targets ``(R, m)`` (0 = none), negatives ``(M,)`` uniform draws, item_prob ``(V+1,)`` training
    frequency -> :class:`Candidates`.  After ``T`` target draws a distinct target is in the set with
    probability ``1 - (1 - p)^T`` (the logQ correction of in-batch negatives); a uniform negative
    adds ``M / n_real`` to any item."""
    real = targets[targets != 0]  # (T,)
    distinct = torch.unique(real)  # (U,) sorted
    p = item_prob[distinct].clamp(1e-12, 1 - 1e-7)  # (U,)
    in_batch = -torch.expm1(len(real) * torch.log1p(-p))  # (U,)
    uniform = len(negatives) / n_real
    log_q = torch.log(torch.cat([in_batch + uniform, torch.full((len(negatives),), uniform)]))
    return Candidates(torch.cat([distinct, negatives]), log_q, len(distinct))


def multi_target_loss(scores: Tensor, candidates: Candidates, targets: Tensor) -> Tensor:
    """Sampled softmax with several targets per row (PinnerFormer's dense all-action loss).

    scores ``(R, C)`` raw over ``candidates.items``, targets ``(R, m)`` (0 = none) -> mean over every
    (row, target) pair of ``-log softmax`` of that target against the candidates that are none of
    the row's targets (the row's other targets and accidental hits among the negatives are masked)."""
    items = candidates.items
    logits = scores - candidates.log_q  # (R, C)
    is_target = (items[None, None, :] == targets[:, :, None]).any(1)  # (R, C)
    negative_lse = logits.masked_fill(is_target, float("-inf")).logsumexp(1)  # (R,)
    rows, slots = (targets != 0).nonzero(as_tuple=True)  # (P,) each
    cols = torch.searchsorted(items[:candidates.n_distinct], targets[rows, slots])  # (P,)
    positive = logits[rows, cols]  # (P,)
    return (torch.logaddexp(positive, negative_lse[rows]) - positive).mean()


def epoch_plan(split: LeaveOneOutSplit, model_cfg: ModelConfig, cfg: TrainConfig, rng: np.random.Generator
               ) -> list[np.ndarray]:
    """One epoch's batches of example rows: whole sequences for sasrec, prefixes otherwise."""
    if model_cfg.model == "sasrec":
        return plan_sequences(split, cfg.batch_size, model_cfg.max_history, rng)
    return plan_prefixes(split, cfg.prefixes_per_user, cfg.batch_size, model_cfg.max_history, rng)


def make_batch(split: LeaveOneOutSplit, rows: np.ndarray, model_cfg: ModelConfig, cfg: TrainConfig) -> Batch:
    if model_cfg.model == "sasrec":
        return sequence_batch(split, rows)
    return prefix_batch(split, rows, model_cfg.max_history, cfg.target_window)


def batch_scores(model: RankingModel, batch: Batch, candidates: Tensor, use_times: bool) -> tuple[Tensor, Tensor]:
    """-> (scores ``(R, C)`` of every encoded row that has a target, their targets ``(R, m)``)."""
    hist = torch.from_numpy(batch.history)  # (B, n)
    times = torch.from_numpy(batch.times) if use_times else None  # (B, n)
    targets = torch.from_numpy(batch.targets)  # (R, m)
    if not batch.left_aligned:
        return model.table_scores(hist, times, candidates), targets  # (B, C)
    if not isinstance(model, SASRecModel):
        raise ValueError(f"a batch of whole left-aligned sequences is for sasrec, not {model.cfg.model!r}")
    users = model.encode_sequence(hist, times).reshape(-1, model.cfg.d_model)  # (B*n, d)
    keep = targets[:, 0] != 0  # (B*n,)
    return model.score_vectors(users[keep], candidates), targets[keep]


def lr_schedule(run: _Run, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate follows whichever ends first, the planned steps or the CPU budget."""
    def factor(step: int) -> float:
        budget_progress = (time.process_time() - run.cpu0) / run.cfg.cpu_budget_s
        return lr_factor(step, total_steps, run.cfg, budget_progress)
    return torch.optim.lr_scheduler.LambdaLR(run.opt, factor)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig, budget_progress: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps``
    or when the CPU budget is spent (``budget_progress`` = fraction spent), whichever comes first:
    a run cut by its budget still ends on a low learning rate."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    step_progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, max(step_progress, budget_progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class _Run:
    """What one training run carries from step to step."""

    split: LeaveOneOutSplit
    model_cfg: ModelConfig
    cfg: TrainConfig
    model: RankingModel
    item_prob: Tensor  # (V+1,) training frequency, 0 for padding
    rng: np.random.Generator
    gen: torch.Generator
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR | None = None
    cpu0: float = field(default_factory=time.process_time)
    steps: int = 0

    def out_of_budget(self) -> bool:
        return time.process_time() - self.cpu0 > self.cfg.cpu_budget_s


def train_step(run: _Run, batch: Batch) -> tuple[float, int]:
    """One optimiser step -> (summed loss over the batch's targets, number of targets)."""
    n_real = run.model_cfg.num_items - 1
    negatives = torch.randint(1, n_real + 1, (run.cfg.num_negatives,), generator=run.gen)
    candidates = in_batch_candidates(torch.from_numpy(batch.targets), negatives, run.item_prob, n_real)
    scores, targets = batch_scores(run.model, batch, candidates.items, run.model_cfg.use_time_gaps)
    loss = multi_target_loss(scores, candidates, targets)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.opt.step()
    if run.sched is not None:
        run.sched.step()
    run.steps += 1
    n_targets = int((targets != 0).sum())
    return float(loss.detach()) * n_targets, n_targets


def run_epoch(run: _Run, plan: Sequence[np.ndarray], epoch: int) -> tuple[float, bool]:
    """Train on one epoch's batches -> (mean loss per target, whether the CPU budget ran out)."""
    run.model.train()
    loss_sum, n_targets, n_tokens, t0 = 0.0, 0, 0, time.perf_counter()
    for rows in plan:
        batch = make_batch(run.split, rows, run.model_cfg, run.cfg)
        loss, count = train_step(run, batch)
        loss_sum, n_targets, n_tokens = loss_sum + loss, n_targets + count, n_tokens + int((batch.history != 0).sum())
        if run.steps % run.cfg.log_every == 0:
            rate = time.perf_counter() - t0
            log.info("epoch %d step %d loss %.4f  %.0f targets/s  %.0f tokens/s", epoch, run.steps,
                     loss_sum / n_targets, n_targets / rate, n_tokens / rate)
        if run.out_of_budget():
            return loss_sum / max(n_targets, 1), True
    return loss_sum / max(n_targets, 1), False


def start_run(split: LeaveOneOutSplit, model_cfg: ModelConfig, cfg: TrainConfig, model: RankingModel,
              counts: np.ndarray) -> tuple[_Run, list[np.ndarray]]:
    """Optimiser, samplers and the first epoch's plan (its length sets the schedule's horizon)."""
    item_prob = torch.cat([torch.zeros(1), torch.from_numpy(counts / max(counts.sum(), 1)).float()])
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    run = _Run(split, model_cfg, cfg, model, item_prob, np.random.default_rng(cfg.seed),
               torch.Generator().manual_seed(cfg.seed), opt)
    plan = epoch_plan(split, model_cfg, cfg, run.rng)
    run.sched = lr_schedule(run, cfg.epochs * len(plan))
    return run, plan


def validation_sample(split: LeaveOneOutSplit, cfg: TrainConfig) -> LeaveOneOutSplit:
    """The split with at most ``cfg.valid_users`` evaluated users (a seeded sample, the same every epoch)."""
    if not cfg.valid_users or len(split.eval_users) <= cfg.valid_users:
        return split
    rng = np.random.default_rng(cfg.seed + 1)
    sample = np.sort(rng.choice(split.eval_users, size=cfg.valid_users, replace=False))
    return dataclasses.replace(split, eval_users=sample)


def train_model(split: LeaveOneOutSplit, model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainResult:
    """Train ``model_cfg`` on ``split`` (see the module docstring); popularity needs no training."""
    torch.manual_seed(train_cfg.seed)
    counts = split.popularity(model_cfg.num_items)  # (V,)
    counts_t = torch.cat([torch.zeros(1, dtype=torch.int64), torch.from_numpy(counts)])  # (V+1,)
    model = create_model(model_cfg, popularity=counts_t)
    if model_cfg.model == "popularity":
        metrics = evaluate_split(model, split, "valid")
        log.info("popularity: valid %s", _fmt(metrics))
        return TrainResult(model.eval(), 0, metrics, [metrics])
    wall0 = time.perf_counter()
    run, plan = start_run(split, model_cfg, train_cfg, model, counts)
    valid = validation_sample(split, train_cfg)
    best = _Best(copy.deepcopy(model.state_dict()))
    stopped_by = "epochs"
    for epoch in range(1, train_cfg.epochs + 1):
        if epoch > 1:
            plan = epoch_plan(split, model_cfg, train_cfg, run.rng)
        t_epoch = time.perf_counter()
        loss, out_of_budget = run_epoch(run, plan, epoch)
        metrics = {"epoch": epoch, "loss": loss, **evaluate_split(model, valid, "valid")}
        log.info("epoch %d done: loss %.4f valid %s (%.0f s, cpu %.0f s)", epoch, loss, _fmt(metrics),
                 time.perf_counter() - t_epoch, time.process_time() - run.cpu0)
        best.update(model, metrics)
        if out_of_budget:
            stopped_by = "cpu_budget"
            log.warning("CPU budget of %.0f s spent in epoch %d", train_cfg.cpu_budget_s, epoch)
            break
        if best.stale >= train_cfg.patience:
            stopped_by = "early_stopping"
            break
    model.load_state_dict(best.state)
    result = TrainResult(model.eval(), best.epoch, best.metrics, best.history,
                         cpu_seconds=time.process_time() - run.cpu0, wall_seconds=time.perf_counter() - wall0,
                         steps=run.steps, stopped_by=stopped_by)
    log.info("best epoch %d of %d (%s): valid %s; %.1f CPU-min, %.1f wall-min", best.epoch, len(best.history),
             stopped_by, _fmt(best.metrics), result.cpu_seconds / 60, result.wall_seconds / 60)
    return result


@dataclass
class _Best:
    """The best epoch so far by validation NDCG@10, and every epoch's metrics."""

    state: dict[str, Any]
    epoch: int = 0
    ndcg: float = -math.inf
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stale: int = 0

    def update(self, model: nn.Module, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if metrics["ndcg@10"] > self.ndcg:
            self.ndcg, self.epoch, self.metrics, self.stale = metrics["ndcg@10"], int(metrics["epoch"]), metrics, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50") if k in metrics)
