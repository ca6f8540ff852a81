"""Tiny models with perturbed weights, so that no test passes because weights are near zero."""

from __future__ import annotations

import torch
from torch import nn

from lime_model.config import ModelConfig
from lime_model.model import create_model
from lime_model.reference import dense_encode_links


def tiny_config(model: str = "lime-xor", **overrides: object) -> ModelConfig:
    kw: dict[str, object] = {"model": model, "num_items": 40, "d_model": 16, "n_heads": 2, "n_links": 4,
                             "n_layers": 2, "max_history": 24, "dropout": 0.0}
    kw.update(overrides)
    return ModelConfig(**kw)  # type: ignore[arg-type]


def tiny_model(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    counts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(cfg.num_items - 1)])  # padding: 0
    model = create_model(cfg, popularity=counts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def right_aligned(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.int64)
    for r, items in enumerate(rows):
        if items:
            out[r, width - len(items):] = torch.tensor(items)
    return out


def times_for(history: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Increasing float64 timestamps (seconds) per row; padding cells get 0."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(history.shape, generator=g, dtype=torch.float64) * 86_400 * 30
    return torch.where(history != 0, 8.8e8 + steps.cumsum(1), torch.zeros((), dtype=torch.float64))


def link_gradients_vs_dense(model: nn.Module, history: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Parameter gradients of a fixed weighted sum of ``L_P``, from the fast encoder and from the
    dense masked reference (in that order), for the caller to compare."""
    grads = []
    for encode in (model.encode_links, lambda h, t: dense_encode_links(model, h, t)):
        model.zero_grad()
        out = encode(history, None)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    return grads
