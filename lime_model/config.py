"""The one configuration type of the model package.

A :class:`ModelConfig` is stored whole in every checkpoint and the network is
rebuilt from it (``lime_model.checkpoint.build_model``), so every field that
changes the shape or the maths of the network lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lime_model.errors import ModelConfigError

MODEL_KINDS: tuple[str, ...] = ("lime-xor", "lime-mha", "sasrec", "popularity")
LIME_KINDS: tuple[str, ...] = ("lime-xor", "lime-mha")
# Fields added after checkpoints were first written, with the value every earlier checkpoint
# implies.  At that value they are left out of what model_version hashes
# (ModelConfig.versioned_dict), so the model versions of earlier checkpoints stay valid.
LATER_FIELDS: dict[str, Any] = {"newest_to_links": False}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters that define a network.

    model:           one of ``MODEL_KINDS``.
    num_items:       vocabulary size INCLUDING the padding index 0 (real items are 1..num_items-1).
    d_model:         width ``d`` of item, link and history tokens.
    n_heads:         attention heads ``H``; ``d_model % n_heads == 0``, ``d_h = d / H``.
    n_links:         number of learned link embeddings ``ell``.
    n_layers:        attention blocks (HSTU-style) in the user encoder.
    max_history:     longest history ``N`` the encoder accepts (size of the recency-position table).
    dropout:         dropout on token embeddings and block outputs (training only).
    use_time_gaps:   add an embedding of a log2-bucketed time gap (seconds) to history tokens: for
                     the LIME encoders ``t_newest - t_i``; for sasrec ``t_i - t_{i-1}``, which stays
                     causal when every position is trained.  The encoder then needs timestamps.
    time_gap_buckets: number of log2 buckets (bucket b holds gaps in ``[2^b - 1, 2^(b+1) - 1)`` s,
                     the last bucket holds everything longer).
    newest_to_links: LIME models: add the newest history token (its state after the XOR blocks) to
                     every link before the final LayerNorm, ``L_P = LayerNorm(X_L + x_newest)``, as
                     SASRec's user vector is the newest position's residual stream.  False (the
                     paper's ``L_P = LayerNorm(X_L)``) for checkpoints stored without the field.
    """

    model: str
    num_items: int
    d_model: int = 64
    n_heads: int = 2
    n_links: int = 32
    n_layers: int = 2
    max_history: int = 200
    dropout: float = 0.1
    use_time_gaps: bool = False
    time_gap_buckets: int = 32
    newest_to_links: bool = False

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ModelConfigError(f"model must be one of {list(MODEL_KINDS)}, got {self.model!r}")
        ints = {name: getattr(self, name) for name in
                ("num_items", "d_model", "n_heads", "n_links", "n_layers", "max_history", "time_gap_buckets")}
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelConfigError(f"{name} must be an int, got {value!r}")
        if self.num_items < 2:
            raise ModelConfigError(f"num_items counts padding index 0 and must be >= 2, got {self.num_items}")
        for name in ("d_model", "n_heads", "n_links", "n_layers", "max_history", "time_gap_buckets"):
            if ints[name] < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {ints[name]}")
        if self.d_model % self.n_heads:
            raise ModelConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) \
                or not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        for name in ("use_time_gaps", "newest_to_links"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.newest_to_links and self.model not in LIME_KINDS:
            raise ModelConfigError(f"newest_to_links is a setting of the link models {list(LIME_KINDS)}, "
                                   f"not of {self.model!r}")

    @property
    def head_dim(self) -> int:
        """``d_h = d_model / n_heads``."""
        return self.d_model // self.n_heads

    @property
    def is_lime(self) -> bool:
        """True for the link-based models (lime-xor, lime-mha) that have candidate tables."""
        return self.model in LIME_KINDS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the form stored in checkpoints)."""
        return dataclasses.asdict(self)

    def versioned_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :data:`LATER_FIELDS` that hold the value older checkpoints
        imply: the form ``model_version`` hashes, the same whether or not the field was written."""
        return {key: value for key, value in self.to_dict().items()
                if not (key in LATER_FIELDS and value == LATER_FIELDS[key])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`ModelConfigError`."""
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config field(s) {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise ModelConfigError(f"model config lacks required field(s) {missing}")
        return cls(**dict(data))
