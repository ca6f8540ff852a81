"""infer_user_links: ``user_histories(ds)`` -> ``user_links(ds)`` (GPU-partitioned LIME-XOR inference).

* users with a usable history (``n > 0``) are repartitioned so that partitions carry
  similar token counts (:mod:`pipelines.runtime.partitioning`), sorted by length inside;
* each task runs on the GPU Spark assigned to it, else on CPU with bounded threads
  (:mod:`pipelines.runtime.model_runtime`), with the model loaded once per Python worker;
* histories arrive as Arrow arrays (``mapInArrow``), never as Python rows, and each task writes
  its ``L_P`` rows to its own Parquet files (``TableStore.write_mapped``): they never pass
  through the JVM.

Every task reports one :class:`TaskRecord` (GPU addresses, device, users, tokens,
seconds, and where it ran: pid, interpreter, working directory) through an accumulator;
the job keeps them in its audit record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.accumulators import AccumulatorParam  # importable on the workers too: they unpickle it

from pipelines.errors import ConfigError
from pipelines.runtime.model_runtime import DEVICE_POLICIES, load_model, task_device
from pipelines.tables.schemas import USER_LINKS

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

    from pipelines.tables.store import ArrowTask


@dataclass(frozen=True)
class InferenceConfig:
    checkpoint: str
    model_version: str
    device: str = "auto"
    max_tokens_per_batch: int = 65_536
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICE_POLICIES:
            raise ConfigError(f"inference device must be one of {list(DEVICE_POLICIES)}, got {self.device!r}")
        if self.max_tokens_per_batch < 1:
            raise ConfigError(f"max_tokens_per_batch must be >= 1, got {self.max_tokens_per_batch}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")


@dataclass(frozen=True)
class TaskRecord:
    partition: int
    attempt: int
    gpus: tuple[str, ...]
    device: str
    users: int
    tokens: int
    seconds: float
    pid: int
    model_loads_in_worker: int
    python: str  # the interpreter of the Python worker (e.g. an unpacked spark.archives environment)
    workdir: str  # the executor's working directory (standalone: <worker dir>/<app id>/<executor id>)


class TaskRecords(AccumulatorParam[list[TaskRecord]]):
    """Accumulates lists of task records."""

    def zero(self, value: list[TaskRecord]) -> list[TaskRecord]:
        return []

    def addInPlace(self, a: list[TaskRecord], b: list[TaskRecord]) -> list[TaskRecord]:
        a.extend(b)
        return a


def histories_to_inputs(batch: pa.RecordBatch, vocab_encode: Callable[[np.ndarray], np.ndarray]
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user: vocabulary indices and float64 epoch seconds (oldest first)."""
    from pipelines.errors import ModelVersionMismatchError

    items = batch.column("item_ids")
    flat_items = pc.list_flatten(items).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    flat_ts = pc.list_flatten(batch.column("ts")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(items).to_numpy(zero_copy_only=False)
    idx = vocab_encode(flat_items)
    if len(idx) and int(idx.min()) == 0:
        bad = flat_items[idx == 0][0]
        raise ModelVersionMismatchError(
            f"user_histories holds item_id {int(bad)}, unknown to the model vocabulary: the histories were "
            "extracted with another checkpoint; re-run extract_histories with this one"
        )
    seconds = flat_ts.astype(np.float64) / 1e6
    cuts = np.cumsum(lengths)[:-1]
    return np.split(idx, cuts), np.split(seconds, cuts)


def l_p_array(l_p: np.ndarray) -> pa.ListArray:
    """(U, W) float32 -> Arrow list<float> with U entries of W values (no Python objects)."""
    users, width = l_p.shape
    offsets = pa.array(np.arange(0, users * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(l_p.reshape(-1), pa.float32()))


def inference_task(cfg: InferenceConfig, ds: str, records: Accumulator[list[TaskRecord]]) -> ArrowTask:
    """mapInArrow function: a partition of :func:`inference_input` -> its ``user_links`` batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import os
        import sys

        from pyspark import TaskContext

        from lime_model.inference import encode_histories
        from pipelines import faults
        from pipelines.runtime import model_runtime

        t0 = time.perf_counter()
        device, gpus = task_device(cfg.device)
        loaded = load_model(cfg.checkpoint, cfg.model_version, device)
        users = tokens = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            histories, seconds = histories_to_inputs(batch, loaded.vocab.encode)
            uses_time = loaded.config.use_time_gaps
            l_p = encode_histories(loaded.model, histories, seconds if uses_time else None, device,
                                   cfg.max_tokens_per_batch)
            users += batch.num_rows
            tokens += int(sum(len(h) for h in histories))
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [pa.array([ds] * n, pa.string()), pa.array([cfg.model_version] * n, pa.string()),
                 batch.column("user_id"), l_p_array(l_p)],
                schema=USER_LINKS.schema,
            )
            faults.task_point("infer_user_links")  # no-op unless $LIME_RANK_FAULT names it (tests)
        ctx = TaskContext.get()
        record = TaskRecord(
            partition=ctx.partitionId() if ctx else -1, attempt=ctx.attemptNumber() if ctx else 0,
            gpus=tuple(gpus), device=str(device), users=users, tokens=tokens,
            seconds=round(time.perf_counter() - t0, 4), pid=os.getpid(),
            model_loads_in_worker=model_runtime.loads_in_this_worker, python=sys.executable, workdir=os.getcwd(),
        )
        records.add([record])

    return run


def inference_input(histories: DataFrame, partitions: int) -> DataFrame:
    """The users of ``histories`` with ``n > 0``, token-balanced into ``partitions`` (lazy); each
    partition is one :func:`inference_task`, whose rows the table layer writes from the task
    itself (``TableStore.write_mapped``)."""
    from pyspark.sql import functions as F

    from pipelines.runtime.partitioning import token_balanced

    usable = histories.where(F.col("n") > 0).select("user_id", "item_ids", "ts", "n")
    return token_balanced(usable, partitions)
