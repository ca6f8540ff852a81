"""precompute_candidates and the candidate matrix the scorer uses.

``candidate_link_weights`` holds, per model version and item: the link weights
``W_c`` (``H*ell``, softmax over the static links per head), the candidate vector
(``d``) and the bias.  It is user-independent, so it is built once per model
version and catalogue, not nightly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import EmptyCatalogueError, NonFiniteValueError
from pipelines.runtime.model_runtime import load_model, task_device
from pipelines.tables.input_contracts import ITEMS_COLUMNS
from pipelines.tables.schemas import CANDIDATE_LINK_WEIGHTS, check_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from pipelines.tables.store import ArrowTask

CHUNK = 8192


def catalogue_in_vocabulary(items: DataFrame, vocab_ids: DataFrame) -> DataFrame:
    """Distinct catalogue item ids the model knows (``item_id`` bigint)."""
    from pyspark.sql import functions as F

    check_schema("items", items.schema, ITEMS_COLUMNS, allow_extra=True)
    ids = items.select(F.col("item_id").cast("bigint")).where(F.col("item_id").isNotNull()).distinct()
    return ids.join(F.broadcast(vocab_ids.select(F.col("item_id").cast("bigint"))), "item_id", "left_semi")


def _candidate_task(checkpoint: str, model_version: str, device_policy: str) -> ArrowTask:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        device, _ = task_device(device_policy)
        loaded = load_model(checkpoint, model_version, device)
        for batch in batches:
            raw = batch.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
            for start in range(0, len(raw), CHUNK):
                chunk = raw[start:start + CHUNK]
                idx = torch.from_numpy(loaded.vocab.encode(chunk)).to(device)
                with torch.inference_mode():
                    tables = loaded.model.candidate_tables(idx)
                w = tables.link_weights.float().cpu().numpy()
                v = tables.cand_vec.float().cpu().numpy()
                b = tables.bias.float().cpu().numpy()
                n = len(chunk)
                yield pa.RecordBatch.from_arrays(
                    [pa.array([model_version] * n, pa.string()), pa.array(chunk, pa.int64()),
                     _rows(w), _rows(v), pa.array(b, pa.float32())],
                    schema=CANDIDATE_LINK_WEIGHTS.schema,
                )

    return run


def _rows(matrix: np.ndarray) -> pa.ListArray:
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


def candidate_rows(candidate_ids: DataFrame, checkpoint: str, model_version: str,
                   device_policy: str = "auto") -> DataFrame:
    """``candidate_link_weights`` rows for ``candidate_ids`` (lazy)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return candidate_ids.mapInArrow(
        _candidate_task(checkpoint, model_version, device_policy),
        from_arrow_schema(CANDIDATE_LINK_WEIGHTS.schema),
    )


@dataclass(frozen=True)
class CandidateMatrix:
    """The candidate table of one model version as dense arrays, rows sorted by item id.

    item_ids ``(C,)`` int64 ascending; link_weights ``(C, H*ell)``; cand_vec ``(C, d)``;
    bias ``(C,)`` float32.
    """

    item_ids: np.ndarray
    link_weights: np.ndarray
    cand_vec: np.ndarray
    bias: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def nbytes(self) -> int:
        return int(self.item_ids.nbytes + self.link_weights.nbytes + self.cand_vec.nbytes + self.bias.nbytes)

    def slice(self, lo: int, hi: int) -> CandidateMatrix:
        return CandidateMatrix(self.item_ids[lo:hi], self.link_weights[lo:hi], self.cand_vec[lo:hi],
                               self.bias[lo:hi])


def _matrix(column: pa.ChunkedArray | pa.Array, width: int, name: str) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != width or lengths.max() != width):
        bad = int(np.flatnonzero(lengths != width)[0])
        raise NonFiniteValueError(
            f"table 'candidate_link_weights': column {name!r} must hold {width} values per row, "
            f"row {bad} holds {int(lengths[bad])}"
        )
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)  # a writable copy
    return flat.reshape(len(lengths), width)


def candidate_matrix(table: pa.Table, n_heads: int, n_links: int, d_model: int) -> CandidateMatrix:
    """Dense arrays from the rows of one ``candidate_link_weights`` partition.

    Refuses (naming table, column and item) non-finite values and wrong widths, and an
    empty catalogue.
    """
    if table.num_rows == 0:
        raise EmptyCatalogueError("table 'candidate_link_weights' has no candidate for this model version")
    table = table.sort_by("item_id")
    ids = table.column("item_id").to_numpy().astype(np.int64)  # astype copies: arrays stay writable
    if len(np.unique(ids)) != len(ids):
        dup = ids[np.flatnonzero(np.diff(ids) == 0)[0]]
        raise NonFiniteValueError(f"table 'candidate_link_weights': item_id {int(dup)} appears more than once")
    weights = _matrix(table.column("link_weights"), n_heads * n_links, "link_weights")
    vec = _matrix(table.column("cand_vec"), d_model, "cand_vec")
    bias = table.column("bias").to_numpy(zero_copy_only=False).astype(np.float32)
    for name, values in (("link_weights", weights), ("cand_vec", vec), ("bias", bias)):
        finite = np.isfinite(values).reshape(len(ids), -1).all(axis=1)
        if not finite.all():
            bad = int(ids[np.flatnonzero(~finite)[0]])
            raise NonFiniteValueError(
                f"table 'candidate_link_weights': column {name!r} holds NaN/inf for item_id {bad} "
                f"({int((~finite).sum())} item(s) affected)"
            )
    return CandidateMatrix(ids, weights, vec, bias)
