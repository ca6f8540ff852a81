"""The model inside Spark tasks: loaded once per Python worker, on the device Spark assigned.

Spark reuses Python workers across tasks (``spark.python.worker.reuse``), so a
module-level cache keeps one loaded model per (checkpoint, model_version,
device) for the worker's life.  The device follows the task's resources:

* ``auto``: the GPU Spark assigned (``TaskContext.resources()['gpu']``) when there is
  one, CPU with bounded threads when there is none; a GPU assigned while CUDA is
  unusable is :class:`GpuUnavailableError`, never a silent CPU run;
* ``cpu``: CPU even when a GPU is assigned (the assignment is still recorded);
* ``cuda``: the assigned GPU (or ``cuda:0``); no CUDA is an error.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipelines.errors import (
    ConfigError,
    GpuUnavailableError,
    ModelVersionMismatchError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    import torch

    from lime_model.config import ModelConfig
    from lime_model.model import LimeModel
    from lime_model.vocab import ItemVocabulary

log = logging.getLogger(__name__)

DevicePolicy = Literal["auto", "cpu", "cuda"]
DEVICE_POLICIES: tuple[str, ...] = ("auto", "cpu", "cuda")
PIPELINE_MODELS = ("lime-xor", "lime-mha")
_MAX_CACHED = 2


@dataclass(frozen=True)
class LoadedModel:
    model: LimeModel
    vocab: ItemVocabulary
    config: ModelConfig
    model_version: str
    device: torch.device


_cache: dict[tuple[str, str, str], LoadedModel] = {}
_lock = threading.Lock()
loads_in_this_worker = 0  # how many times this process loaded a checkpoint (tests read it)


def check_pipeline_model(config: ModelConfig, path: str) -> None:
    if config.model not in PIPELINE_MODELS:
        raise UnsupportedModelError(
            f"checkpoint {path} holds a {config.model!r} model; the nightly pipeline needs link "
            f"embeddings from one of {list(PIPELINE_MODELS)}"
        )


def load_model(path: str, expected_version: str, device: torch.device) -> LoadedModel:
    """The cached model for this worker; loads the checkpoint on first use."""
    global loads_in_this_worker
    key = (os.path.abspath(path), expected_version, str(device))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        from lime_model.checkpoint import build_lime_model, load_checkpoint

        ckpt = load_checkpoint(path)
        if ckpt.model_version != expected_version:
            raise ModelVersionMismatchError(
                f"checkpoint {path} now holds model_version {ckpt.model_version}, but this run started "
                f"with {expected_version} (was the file replaced during the run?)"
            )
        check_pipeline_model(ckpt.config, path)
        model = build_lime_model(ckpt).to(device)
        if len(_cache) >= _MAX_CACHED:
            _cache.pop(next(iter(_cache)))
        loaded = LoadedModel(model, ckpt.vocab, ckpt.config, ckpt.model_version, device)
        _cache[key] = loaded
        loads_in_this_worker += 1
        log.info("loaded model %s from %s on %s", expected_version, path, device)
        return loaded


def assigned_gpus() -> list[str]:
    """GPU addresses Spark's resource scheduler gave the running task (empty outside tasks)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def choose_device(policy: str, gpus: Sequence[str], cuda_available: bool) -> str:
    """The torch device string for ``policy`` given the task's GPUs (pure; unit-tested)."""
    if policy not in DEVICE_POLICIES:
        raise ConfigError(f"inference device must be one of {list(DEVICE_POLICIES)}, got {policy!r}")
    if policy == "cpu":
        return "cpu"
    if policy == "cuda" or gpus:
        if not cuda_available:
            where = f"GPU {gpus[0]} was assigned to this task" if gpus else "--inference-device cuda was asked"
            raise GpuUnavailableError(
                f"{where} but CUDA is not available in this Python worker; fix the executor image, "
                "or run with --inference-device cpu to use the CPU deliberately"
            )
        return f"cuda:{gpus[0]}" if gpus else "cuda:0"
    return "cpu"


def task_device(policy: str) -> tuple[torch.device, list[str]]:
    """(device, assigned GPU addresses) for the running task; bounds CPU threads."""
    import torch

    gpus = assigned_gpus()
    device = torch.device(choose_device(policy, gpus, torch.cuda.is_available()))
    if device.type == "cpu":
        # Spark sets OMP_NUM_THREADS to spark.task.cpus in Python workers: one task, its cores.
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return device, gpus
