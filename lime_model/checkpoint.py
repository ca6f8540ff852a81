"""One-file checkpoints: config + weights + item vocabulary + popularity + ``model_version``.

The file is a ``torch.save`` of plain types only (dicts, lists, str, int,
float, bool, tensors), read back with ``torch.load(weights_only=True)``.
``model_version`` is the first 16 hex digits of a sha256 over the config, the
weights, the vocabulary and the popularity counts, so two checkpoints with the
same content have the same version and any change of content changes it.

Loading checks, in this order, and raises the first failure:

1. the path exists                               -> :class:`CheckpointNotFoundError`
2. it unpickles and has the expected structure   -> :class:`CheckpointCorruptError`
3. no tensor holds NaN or inf                    -> :class:`CheckpointNaNError`
4. the weights and vocabulary fit the config     -> :class:`CheckpointConfigMismatchError`
5. the content hash equals the stored version    -> :class:`CheckpointCorruptError`
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from lime_model.config import ModelConfig
from lime_model.errors import (
    CheckpointConfigMismatchError,
    CheckpointCorruptError,
    CheckpointNaNError,
    CheckpointNotFoundError,
    ModelConfigError,
    VocabularyError,
)
from lime_model.model import LimeModel, PopularityModel, RankingModel, create_model
from lime_model.vocab import ItemVocabulary

log = logging.getLogger(__name__)

FORMAT = "lime-rank-checkpoint"
FORMAT_VERSION = 1
_KEYS = ("format", "format_version", "config", "state_dict", "item_ids", "popularity", "model_version",
         "metadata")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint.

    popularity: ``(V,) int64`` training interaction count per item, aligned with ``vocab.item_ids``.
    model_version: 16 lowercase hex digits.
    """

    config: ModelConfig
    state_dict: dict[str, Tensor]
    vocab: ItemVocabulary
    popularity: np.ndarray
    model_version: str
    metadata: dict[str, Any] = field(default_factory=dict)


def content_hash(config: ModelConfig, state_dict: Mapping[str, Tensor], item_ids: np.ndarray,
                 popularity: np.ndarray) -> str:
    """``model_version``: sha256 (first 16 hex digits) over config (:meth:`ModelConfig.versioned_dict`),
    weights, vocabulary, popularity."""
    h = hashlib.sha256()
    h.update(json.dumps(config.versioned_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(b"\0item_ids\0" + np.ascontiguousarray(item_ids, dtype=np.int64).tobytes())
    h.update(b"\0popularity\0" + np.ascontiguousarray(popularity, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _non_finite(state_dict: Mapping[str, Tensor]) -> list[str]:
    bad = []
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name!r} ({count} of {tensor.numel()} values)")
    return bad


def save_checkpoint(path: str | os.PathLike[str], model: RankingModel, vocab: ItemVocabulary,
                    popularity: np.ndarray, metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (with its ``.cfg``), ``vocab`` and ``popularity`` ``(V,) int64`` atomically
    (temporary file + rename) and return the ``model_version``.  ``metadata`` must be JSON-able."""
    cfg = model.cfg
    path = Path(path)
    if len(vocab) + 1 != cfg.num_items:
        raise CheckpointConfigMismatchError(
            f"vocabulary has {len(vocab)} items (+1 padding) but config.num_items is {cfg.num_items}")
    popularity = np.asarray(popularity)
    if popularity.shape != (len(vocab),) or popularity.dtype != np.int64 or (popularity < 0).any():
        raise ValueError(f"popularity must be ({len(vocab)},) non-negative int64, got "
                         f"{popularity.dtype} {popularity.shape}")
    if isinstance(model, PopularityModel) and not np.array_equal(
            model.counts[1:].to(torch.int64).numpy(), popularity):
        raise ValueError("a popularity model's counts must equal the popularity array being saved")
    meta = json.loads(json.dumps(dict(metadata or {})))  # plain types only, fails early otherwise
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = _non_finite(state)
    if bad:
        raise CheckpointNaNError(f"refusing to save {path}: NaN/inf in {', '.join(bad)}")
    version = content_hash(cfg, state, vocab.item_ids, popularity)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": state,
        "item_ids": torch.from_numpy(vocab.item_ids.copy()),
        "popularity": torch.from_numpy(popularity.copy()),
        "model_version": version,
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved %s checkpoint %s (model_version %s)", cfg.model, path, version)
    return version


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    if cfg.model == "popularity":
        return {}
    with torch.device("meta"):
        model = create_model(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def load_checkpoint(path: str | os.PathLike[str], expected_config: ModelConfig | None = None) -> Checkpoint:
    """Read and verify a checkpoint (see the module docstring for the checks and their errors).

    ``expected_config``: when given, a stored config that differs is a
    :class:`CheckpointConfigMismatchError`.
    """
    path = Path(path)
    payload = _read_payload(path)
    state, item_ids, popularity = payload["state_dict"], payload["item_ids"], payload["popularity"]
    config, vocab = _parse_config(path, payload["config"]), _parse_vocabulary(path, item_ids)
    bad = _non_finite(state)
    if bad:
        raise CheckpointNaNError(f"checkpoint {path}: NaN/inf in tensor {', '.join(bad)}")
    _check_fit(path, config, vocab, popularity, state)
    if expected_config is not None and expected_config != config:
        diff = {k: (v, getattr(config, k)) for k, v in expected_config.to_dict().items()
                if getattr(config, k) != v}
        raise CheckpointConfigMismatchError(
            f"checkpoint {path}: config differs from the expected one (field: (expected, stored)) {diff}")
    version = payload["model_version"]
    actual = content_hash(config, state, item_ids.numpy(), popularity.numpy())
    if actual != version:
        raise CheckpointCorruptError(
            f"checkpoint {path}: content hash {actual} does not match its model_version {version!r}")
    return Checkpoint(config=config, state_dict=state, vocab=vocab, popularity=popularity.numpy().copy(),
                      model_version=version, metadata=payload["metadata"])


def _read_payload(path: Path) -> dict[str, Any]:
    """The file's payload, with every key present and of the right type (else the error names it)."""
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointCorruptError(f"checkpoint {path} is not a regular file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors...
        raise CheckpointCorruptError(
            f"checkpoint {path} is truncated or unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointCorruptError(f"checkpoint {path} is not a {FORMAT} file")
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise CheckpointCorruptError(f"checkpoint {path} lacks {missing}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"checkpoint {path} has format_version {payload['format_version']!r}, expected {FORMAT_VERSION}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointCorruptError(f"checkpoint {path}: state_dict is not a dict of tensors")
    for name in ("item_ids", "popularity"):
        t = payload[name]
        if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise CheckpointCorruptError(f"checkpoint {path}: {name} is not a 1-D int64 tensor")
    if not isinstance(payload["model_version"], str) or not isinstance(payload["metadata"], dict):
        raise CheckpointCorruptError(f"checkpoint {path}: model_version/metadata have wrong types")
    return payload


def _parse_config(path: Path, data: Any) -> ModelConfig:
    try:
        return ModelConfig.from_dict(data)
    except ModelConfigError as exc:
        raise CheckpointCorruptError(f"checkpoint {path} holds an invalid config: {exc}") from exc


def _parse_vocabulary(path: Path, item_ids: Tensor) -> ItemVocabulary:
    try:
        return ItemVocabulary(item_ids.numpy())
    except VocabularyError as exc:
        raise CheckpointCorruptError(f"checkpoint {path} holds an invalid vocabulary: {exc}") from exc


def _check_fit(path: Path, config: ModelConfig, vocab: ItemVocabulary, popularity: Tensor,
               state: dict[str, Tensor]) -> None:
    """Vocabulary, popularity and every tensor's shape against the config; all problems in one error."""
    problems = []
    if len(vocab) + 1 != config.num_items:
        problems.append(f"vocabulary has {len(vocab)} items + padding, "
                        f"config.num_items is {config.num_items}")
    if popularity.shape[0] != len(vocab):
        problems.append(f"popularity has {popularity.shape[0]} entries for {len(vocab)} items")
    expected = _expected_shapes(config)
    problems += [f"missing tensor {name!r}" for name in sorted(set(expected) - set(state))]
    problems += [f"unexpected tensor {name!r}" for name in sorted(set(state) - set(expected))]
    problems += [f"tensor {name!r} has shape {tuple(state[name].shape)}, config wants {expected[name]}"
                 for name in sorted(set(state) & set(expected)) if tuple(state[name].shape) != expected[name]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        raise CheckpointConfigMismatchError(f"checkpoint {path}: weights do not fit its config: {shown}")


def popularity_counts(ckpt: Checkpoint) -> Tensor:
    """``(num_items,)`` int64 counts indexed by vocabulary index (0 for padding)."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.from_numpy(ckpt.popularity)])


def build_model(ckpt: Checkpoint) -> RankingModel:
    """The network of ``ckpt`` with its weights, in eval mode, on CPU."""
    return _with_weights(create_model(ckpt.config, popularity=popularity_counts(ckpt)), ckpt)


def build_lime_model(ckpt: Checkpoint) -> LimeModel:
    """:func:`build_model` for a ``lime-xor`` or ``lime-mha`` checkpoint, the networks that make link
    embeddings (any other kind is the ``ValueError`` of :class:`LimeModel`)."""
    return _with_weights(LimeModel(ckpt.config), ckpt)


_Net = TypeVar("_Net", bound=nn.Module)


def _with_weights(model: _Net, ckpt: Checkpoint) -> _Net:
    """``model`` with the weights of ``ckpt`` (a popularity checkpoint has none), in eval mode."""
    if ckpt.state_dict:
        model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()
