"""score_topk: ``user_links(ds)`` x ``candidate_link_weights(model_version)`` -> exact top-K per user.

Like Spark MLlib's ``recommendForAllUsers``, users are scored in blocks with a
matrix product and a bounded top-K per block, never as user x candidate rows:

* **broadcast** (the candidate matrix fits ``broadcast_max_bytes``): the compact
  table (``W_c``, ``t'_c``, ``b_c``: ``(H*ell + d + 1)`` floats per item) is
  broadcast once per executor; each task walks its users in blocks and the
  candidates in blocks, folding each candidate block into ``(C_b, ell*d)`` on the
  fly (``lime_model.scoring.fold_candidates``) so one GEMM scores it, and keeps a
  running exact top-K;
* **sharded** (it does not fit): candidates are split into id ranges; every task
  holds a chunk of its users (``user_chunk_bytes``), reads the shards from the table
  files one after the other and merges each shard's top-K into a running top-K, so
  the users' input is read once and the lists need no merge afterwards.

Both give the same lists: score descending, item id ascending on ties.  Seen items
are excluded when ``exclude_seen``; users without a usable history get the
popularity list (``source='popular'``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.errors import ConfigError, NonFiniteValueError
from pipelines.runtime.candidate_matrix import CandidateMatrix, candidate_matrix
from pipelines.runtime.model_runtime import DEVICE_POLICIES, LoadedModel, load_model, task_device

if TYPE_CHECKING:
    import torch
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.tables.store import ArrowTask

CANDIDATE_MODES = ("auto", "broadcast", "sharded")
SOURCE_MODEL = "model"
SOURCE_POPULAR = "popular"
MAX_TOP_K = 10_000
TOPK_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
])


# candidates per GEMM: the (user_block x CANDIDATE_BLOCK) float32 scores stay near the cache
# (docs/pipeline.md, "Tuning constants", has the measurement)
CANDIDATE_BLOCK = 4096


@dataclass(frozen=True)
class ScoringConfig:
    checkpoint: str
    model_version: str
    top_k: int
    exclude_seen: bool = True
    candidate_mode: str = "auto"
    broadcast_max_bytes: int = 512 * 1024 * 1024
    # seen lists (user_histories.seen_item_ids) are broadcast to the scoring tasks up to this bound
    # (estimated as users x the largest seen set's ids, an upper bound: ~120k users at 100 ids);
    # above it they are joined by a shuffle in Spark (0: always), whose L_P rows cost JVM memory
    seen_broadcast_max_bytes: int = 128 * 1024 * 1024
    shards: int | None = None
    # sharded candidates: a scoring task holds up to this much of its users' input while it walks
    # the shards (each shard is read once per such chunk; the users' input once in all)
    user_chunk_bytes: int = 256 * 1024 * 1024
    candidate_block: int = CANDIDATE_BLOCK
    user_block: int = 1024
    device: str = "cpu"
    per_user_candidates: bool = False  # rank each user's list in user_candidates(ds) when it has one

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be in [1, {MAX_TOP_K}], got {self.top_k}")
        if self.candidate_mode not in CANDIDATE_MODES:
            raise ConfigError(f"candidate mode must be one of {list(CANDIDATE_MODES)}, got {self.candidate_mode!r}")
        if self.broadcast_max_bytes < 1:
            raise ConfigError(f"broadcast_max_bytes must be >= 1, got {self.broadcast_max_bytes}")
        if self.seen_broadcast_max_bytes < 0:
            raise ConfigError(f"seen_broadcast_max_bytes must be >= 0, got {self.seen_broadcast_max_bytes}")
        if self.user_chunk_bytes < 1:
            raise ConfigError(f"user_chunk_bytes must be >= 1, got {self.user_chunk_bytes}")
        if self.shards is not None and self.shards < 1:
            raise ConfigError(f"shards must be >= 1, got {self.shards}")
        if self.candidate_block < 1 or self.user_block < 1:
            raise ConfigError(f"candidate_block and user_block must be >= 1, got {self.candidate_block}, "
                              f"{self.user_block}")
        if self.device not in DEVICE_POLICIES:
            raise ConfigError(f"scoring device must be one of {list(DEVICE_POLICIES)}, got {self.device!r}")


# --- the kernel (runs in tasks; pure numpy/torch) ------------------------------------------
def seen_positions(seen: pa.Array | pa.ChunkedArray | None, candidate_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate position) of every seen item that is a candidate."""
    if seen is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lengths = pc.list_value_length(seen).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.searchsorted(candidate_ids, flat)
    hit = pos < len(candidate_ids)
    hit[hit] = candidate_ids[pos[hit]] == flat[hit]
    return rows[hit], pos[hit]


def topk_against(values: torch.Tensor, cands: CandidateMatrix, n_heads: int, n_links: int, k: int,
                 excluded: tuple[np.ndarray, np.ndarray], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """values ``(B, ell, d)`` = ``V(L_P)`` -> exact top-k (ids ``(B, k)``, scores ``(B, k)``) over ``cands``.

    Candidate blocks of ``block`` rows are folded to ``(C_b, ell*d)`` and scored with one
    GEMM each; ``excluded`` (rows, candidate positions) are never returned.
    """
    import torch

    from lime_model.scoring import fold_candidates, score_folded
    from lime_model.topk import PAD_ID, exact_topk, merge_topk

    batch = values.shape[0]
    device = values.device
    best_ids = torch.full((batch, k), PAD_ID, dtype=torch.int64, device=device)
    best_scores = torch.full((batch, k), float("-inf"), dtype=torch.float32, device=device)
    ex_rows, ex_pos = excluded
    for lo in range(0, len(cands), block):
        hi = min(lo + block, len(cands))
        part = cands.slice(lo, hi)
        folded = fold_candidates(torch.from_numpy(part.link_weights).to(device),
                                 torch.from_numpy(part.cand_vec).to(device), n_heads, n_links)  # (C_b, ell*d)
        scores = score_folded(values, folded, torch.from_numpy(part.bias).to(device))  # (B, C_b)
        sel = (ex_pos >= lo) & (ex_pos < hi)
        if sel.any():
            scores[torch.from_numpy(ex_rows[sel]), torch.from_numpy(ex_pos[sel] - lo)] = float("-inf")
        ids, top = exact_topk(scores.float(), torch.from_numpy(part.item_ids).to(device), k)
        best_ids, best_scores = merge_topk(best_ids, best_scores, ids, top, k)
    return best_ids, best_scores


def topk_per_user_lists(values: torch.Tensor, cands: CandidateMatrix, n_heads: int, n_links: int, k: int,
                        lists: pa.Array | pa.ChunkedArray, seen: pa.Array | pa.ChunkedArray | None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each user over that user's own candidate list (items outside ``cands`` ignored).

    ``lists``: per user a list of item ids (an empty list: no recommendation from the model).
    """
    import torch

    from lime_model.scoring import fold_candidates, score_folded
    from lime_model.topk import PAD_ID, exact_topk

    batch = values.shape[0]
    device = values.device
    best_ids = torch.full((batch, k), PAD_ID, dtype=torch.int64, device=device)
    best_scores = torch.full((batch, k), float("-inf"), dtype=torch.float32, device=device)
    seen_rows, seen_pos = seen_positions(seen, cands.item_ids)
    for row in range(batch):
        raw = lists[row].values.to_numpy(zero_copy_only=False) if lists[row].is_valid else np.empty(0, np.int64)
        pos = np.unique(np.searchsorted(cands.item_ids, raw))
        pos = pos[pos < len(cands)]
        pos = pos[np.isin(cands.item_ids[pos], raw)]
        pos = pos[~np.isin(pos, seen_pos[seen_rows == row])]
        if len(pos) == 0:
            continue
        part = CandidateMatrix(cands.item_ids[pos], cands.link_weights[pos], cands.cand_vec[pos], cands.bias[pos])
        folded = fold_candidates(torch.from_numpy(part.link_weights).to(device),
                                 torch.from_numpy(part.cand_vec).to(device), n_heads, n_links)  # (n_u, ell*d)
        scores = score_folded(values[row:row + 1], folded, torch.from_numpy(part.bias).to(device))  # (1, n_u)
        ids, top = exact_topk(scores, torch.from_numpy(part.item_ids).to(device), k)
        best_ids[row], best_scores[row] = ids[0], top[0]
    return best_ids, best_scores


def topk_rows(user_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> pa.RecordBatch:
    """(user_id, rank, item_id, score) rows from per-user lists; padding (-1) dropped."""
    keep = ids >= 0
    batch, k = ids.shape
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (batch, k))
    return pa.RecordBatch.from_arrays(
        [pa.array(np.repeat(user_ids, keep.sum(axis=1)), pa.int64()), pa.array(ranks[keep], pa.int32()),
         pa.array(ids[keep], pa.int64()), pa.array(scores[keep].astype(np.float32), pa.float32())],
        schema=TOPK_SCHEMA,
    )


# --- where a task finds its candidates -----------------------------------------------------
class CandidateSource(Protocol):
    def load(self, n_heads: int, n_links: int, d_model: int) -> CandidateMatrix: ...


@dataclass(frozen=True)
class BroadcastCandidates:
    """The whole matrix, shipped once per executor as a Spark broadcast of numpy arrays."""

    broadcast: Broadcast[CandidateMatrix]

    def load(self, n_heads: int, n_links: int, d_model: int) -> CandidateMatrix:
        return self.broadcast.value


_shard_cache: dict[tuple[object, ...], CandidateMatrix] = {}


@dataclass(frozen=True)
class ShardCandidates:
    """Candidates with ``lo <= item_id < hi``, read by the task from the table's files."""

    files: tuple[str, ...]
    lo: int
    hi: int

    def load(self, n_heads: int, n_links: int, d_model: int) -> CandidateMatrix:
        import pyarrow.dataset as pads

        key = (self.files, self.lo, self.hi)
        if key not in _shard_cache:
            data = pads.dataset(list(self.files), format="parquet")
            field = pads.field("item_id")
            table = data.to_table(filter=(field >= self.lo) & (field < self.hi))
            _shard_cache.clear()  # one shard per worker at a time: the memory bound holds
            _shard_cache[key] = candidate_matrix(table, n_heads, n_links, d_model)
        return _shard_cache[key]


@dataclass(frozen=True)
class LinkFiles:
    """Scoring input read by the task itself from ``user_links``' Parquet files.

    The task's rows are file paths (:func:`link_file_rows`); it streams each file's
    ``user_id, l_p`` in batches of ``batch_rows`` and attaches every user's ``seen`` list from
    the broadcast Arrow table (``user_id, seen``; None when seen items are not excluded).
    ``L_P`` then never becomes Spark rows (no JVM Parquet decode, join or conversion back to
    Arrow), which keeps the JVM's memory down (docs/pipeline.md, "Tuning constants").
    """

    seen: Broadcast[pa.Table] | None
    batch_rows: int = 8192
    skip: Broadcast[np.ndarray] | None = None  # users not to score (incremental: their lists are copied)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        seen = None if self.seen is None else self.seen.value
        keys = None if seen is None else seen.column("user_id").combine_chunks()
        lists = None if seen is None else seen.column("seen").combine_chunks()
        skip = None if self.skip is None else pa.array(self.skip.value, pa.int64())
        for batch in batches:
            for path in batch.column("path").to_pylist():
                for part in self._read(path, skip):
                    arrays, names = [part.column("user_id"), part.column("l_p")], ["user_id", "l_p"]
                    if keys is not None and lists is not None:
                        arrays.append(lists.take(pc.index_in(part.column("user_id"), value_set=keys)))
                        names.append("seen")
                    yield pa.RecordBatch.from_arrays(arrays, names=names)

    def _read(self, path: str, skip: pa.Array | None) -> Iterator[pa.RecordBatch]:
        """``user_id, l_p`` of the file's users not in ``skip``: a row group whose users are all
        skipped is not decoded beyond its ``user_id`` column."""
        import pyarrow.parquet as pq

        fs, where = pafs.FileSystem.from_uri(path)
        with fs.open_input_file(where) as handle:
            parquet = pq.ParquetFile(handle)
            if skip is None:
                yield from parquet.iter_batches(self.batch_rows, columns=["user_id", "l_p"])
                return
            for group in range(parquet.metadata.num_row_groups):
                ids = parquet.read_row_group(group, columns=["user_id"]).column("user_id")
                wanted = pc.invert(pc.is_in(ids, value_set=skip))
                if pc.any(wanted).as_py():
                    rows = parquet.read_row_group(group, columns=["user_id", "l_p"]).filter(wanted)
                    yield from rows.to_batches(max_chunksize=self.batch_rows)


def link_file_rows(spark: SparkSession, files: Sequence[str]) -> DataFrame:
    """One row (``path``) per partition: the tasks of :class:`LinkFiles` scoring."""
    rdd = spark.sparkContext.parallelize([(f,) for f in files], len(files))
    return spark.createDataFrame(rdd, "path string")


def _check_finite_links(flat: np.ndarray, user_ids: pa.Array, width: int) -> None:
    """NaN/inf in ``user_links.l_p`` (a foreign writer, a broken model) is an error naming the user."""
    finite = np.isfinite(flat)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1, width).all(axis=1))
        raise NonFiniteValueError(
            f"table 'user_links': column 'l_p' holds NaN/inf for user_id {user_ids[int(bad[0])].as_py()} "
            f"({len(bad)} user(s) of this batch affected)"
        )


def _score_block(loaded: LoadedModel, batch: pa.RecordBatch, cands: CandidateMatrix, k: int,
                 cfg: ScoringConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One user block (user_id, l_p, [seen], [candidates]) against ``cands`` -> (ids, scores) ``(B, k)``."""
    import torch

    mc = loaded.config
    flat = pc.list_flatten(batch.column("l_p")).to_numpy(zero_copy_only=False)
    _check_finite_links(flat, batch.column("user_id"), mc.n_links * mc.d_model)
    l_p = torch.from_numpy(flat.astype(np.float32)).view(batch.num_rows, mc.n_links, mc.d_model).to(device)
    seen = batch.column("seen") if cfg.exclude_seen else None
    lists = batch.column("candidates") if "candidates" in batch.schema.names else None
    with torch.inference_mode():
        values = loaded.model.link_values(l_p).float()  # (B, ell, d)
        # users with their own candidate list are scored on it; the others on the catalogue
        own = (np.zeros(batch.num_rows, bool) if lists is None
               else pc.is_valid(lists).to_numpy(zero_copy_only=False))
        ids = torch.empty((batch.num_rows, k), dtype=torch.int64, device=device)
        scores = torch.empty((batch.num_rows, k), dtype=torch.float32, device=device)
        if (~own).any():
            rows = np.flatnonzero(~own)
            excluded = seen_positions(None if seen is None else seen.take(rows), cands.item_ids)
            ids[rows], scores[rows] = topk_against(values[rows], cands, mc.n_heads, mc.n_links, k,
                                                   excluded, cfg.candidate_block)
        if own.any() and lists is not None:
            rows = np.flatnonzero(own)
            ids[rows], scores[rows] = topk_per_user_lists(
                values[rows], cands, mc.n_heads, mc.n_links, k, lists.take(rows),
                None if seen is None else seen.take(rows))
    return ids, scores


def _chunks(blocks: Iterator[pa.RecordBatch], max_bytes: int) -> Iterator[list[pa.RecordBatch]]:
    """Consecutive user blocks grouped until a group holds ``max_bytes`` (0: one block per group)."""
    chunk: list[pa.RecordBatch] = []
    held = 0
    for block in blocks:
        chunk.append(block)
        held += block.nbytes
        if held >= max_bytes:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _score_task(cfg: ScoringConfig, sources: Sequence[CandidateSource], k: int,
                reader: LinkFiles | None = None) -> ArrowTask:
    """mapInArrow function: every user of the partition against every candidate source, read once.

    With several sources (candidate shards) the task holds up to ``cfg.user_chunk_bytes`` of its
    users' input, scores them against one shard after the other and keeps a running top-K: the
    users' input (user_links files or a Spark join) is read once, not once per shard, and no
    ``shards x K`` rows per user need a merge by a shuffle afterwards."""
    from lime_model.topk import merge_topk

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if reader is not None:
            batches = reader(batches)
        device, _ = task_device(cfg.device)
        loaded = load_model(cfg.checkpoint, cfg.model_version, device)
        mc = loaded.config
        # user blocks of bounded size: memory per task is (user_block x candidate_block) scores
        blocks = (whole.slice(off, cfg.user_block) for whole in batches
                  for off in range(0, whole.num_rows, cfg.user_block))
        for chunk in _chunks(blocks, cfg.user_chunk_bytes if len(sources) > 1 else 0):
            first = sources[0].load(mc.n_heads, mc.n_links, mc.d_model)
            best = [_score_block(loaded, batch, first, k, cfg, device) for batch in chunk]
            for source in sources[1:]:
                cands = source.load(mc.n_heads, mc.n_links, mc.d_model)
                for i, batch in enumerate(chunk):
                    best[i] = merge_topk(*best[i], *_score_block(loaded, batch, cands, k, cfg, device), k)
            for batch, (ids, scores) in zip(chunk, best, strict=True):
                yield topk_rows(batch.column("user_id").to_numpy(zero_copy_only=False),
                                ids.cpu().numpy(), scores.cpu().numpy())

    return run


# --- driver side -----------------------------------------------------------------------------
def shard_bounds(item_ids: np.ndarray, shards: int) -> list[tuple[int, int]]:
    """Contiguous id ranges ``[lo, hi)`` with about ``len/shards`` candidates each (ids sorted)."""
    if len(item_ids) == 0:
        return []
    cuts = [int(item_ids[min(len(item_ids) - 1, (len(item_ids) * s) // shards)]) for s in range(shards)]
    bounds = sorted(set(cuts))
    edges = [*bounds, int(item_ids[-1]) + 1]
    return [(edges[i], edges[i + 1]) for i in range(len(bounds))]


def model_topk(
    users: DataFrame,
    cfg: ScoringConfig,
    *,
    mode: str,
    candidate_ids: np.ndarray,
    broadcast: Broadcast[CandidateMatrix] | None = None,
    files: Sequence[str] = (),
    shards: int = 1,
    reader: LinkFiles | None = None,
) -> DataFrame:
    """(user_id, rank, item_id, score) for ``users`` (user_id, l_p, seen) — lazy; with ``reader``,
    ``users`` are :func:`link_file_rows` and each task reads its users itself.  Sharded, each task
    walks the shards itself (:func:`_score_task`), so ``users`` is read once."""
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(TOPK_SCHEMA)
    if mode == "broadcast":
        if broadcast is None:
            raise ConfigError("broadcast scoring needs the candidate broadcast")
        return users.mapInArrow(_score_task(cfg, [BroadcastCandidates(broadcast)], cfg.top_k, reader), schema)
    shard_sources = [ShardCandidates(tuple(files), lo, hi) for lo, hi in shard_bounds(candidate_ids, shards)]
    return users.mapInArrow(_score_task(cfg, shard_sources, cfg.top_k, reader), schema)


def dot_product_topk(users: DataFrame, item_ids: np.ndarray, item_factors: np.ndarray, k: int,
                     user_block: int = 1024, candidate_block: int = 8192) -> DataFrame:
    """The same block top-K engine for plain dot-product models (two towers, ALS factors).

    ``users``: (user_id bigint, features array<float> of width r); ``item_factors`` ``(C, r)``.
    A dot product is the LIME score with one link and one head whose weights are 1 and no
    bias, so the very kernel the nightly scorer uses runs here.  Returns (user_id, rank,
    item_id, score) with the same tie rule (score desc, item id asc).
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    order = np.argsort(item_ids, kind="stable")
    factors = np.ascontiguousarray(item_factors[order], dtype=np.float32)
    matrix = CandidateMatrix(np.asarray(item_ids, np.int64)[order], np.ones((len(order), 1), np.float32),
                             factors, np.zeros(len(order), np.float32))
    broadcast = users.sparkSession.sparkContext.broadcast(matrix)
    rank = factors.shape[1]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        task_device("cpu")
        cands = broadcast.value
        empty = (np.empty(0, np.int64), np.empty(0, np.int64))
        blocks = (b.slice(o, user_block) for b in batches for o in range(0, b.num_rows, user_block))
        for batch in blocks:
            flat = pc.list_flatten(batch.column("features")).to_numpy(zero_copy_only=False)
            values = torch.from_numpy(flat.astype(np.float32)).view(batch.num_rows, 1, rank)  # (B, 1, r)
            with torch.inference_mode():
                ids, scores = topk_against(values, cands, 1, 1, k, empty, candidate_block)
            yield topk_rows(batch.column("user_id").to_numpy(zero_copy_only=False), ids.numpy(), scores.numpy())

    return users.select("user_id", "features").mapInArrow(run, from_arrow_schema(TOPK_SCHEMA))


def popular_items(histories: DataFrame, candidate_ids: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The popularity list: (rank, item_id, score=count) of the k candidates seen most in the
    histories of ds (count desc, item id asc), filled with unseen candidates by id if needed."""
    from pyspark.sql import functions as F

    spark = histories.sparkSession
    cands = spark.createDataFrame(pa.table({"item_id": pa.array(candidate_ids, pa.int64())}))
    counts = (
        histories.select(F.explode("item_ids").alias("item_id"))
        .groupBy("item_id").count()
        .join(F.broadcast(cands), "item_id", "left_semi")
        .orderBy(F.desc("count"), F.asc("item_id"))
        .limit(k)
        .collect()
    )
    return _popular_list([(int(r.item_id), float(r["count"])) for r in counts], candidate_ids, k)


def popular_items_arrow(item_ids: pa.Array | pa.ChunkedArray, candidate_ids: np.ndarray,
                        k: int) -> list[tuple[int, int, float]]:
    """:func:`popular_items` from ``user_histories.item_ids`` already on the driver (no Spark job)."""
    return _ranked_popular(*_candidate_counts(item_ids, candidate_ids), candidate_ids, k)


def popular_items_from_files(files: Sequence[str], candidate_ids: np.ndarray, k: int,
                             ) -> list[tuple[int, int, float]]:
    """:func:`popular_items` from ``user_histories`` data files read on the driver, one row group's
    ``item_ids`` at a time (memory: one row group and the counts of distinct items), no Spark job."""
    import pyarrow.parquet as pq

    items, counts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for path in files:
        fs, where = pafs.FileSystem.from_uri(path)
        with fs.open_input_file(where) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.metadata.num_row_groups):
                ids, seen = _candidate_counts(parquet.read_row_group(group, columns=["item_ids"]).column("item_ids"),
                                              candidate_ids)
                items.append(ids)
                counts.append(seen)
    ids, where_in = np.unique(np.concatenate(items), return_inverse=True)
    return _ranked_popular(ids, np.bincount(where_in, weights=np.concatenate(counts), minlength=len(ids)),
                           candidate_ids, k)


def _candidate_counts(item_ids: pa.Array | pa.ChunkedArray, candidate_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidate item ids, how often the lists hold each), ids ascending."""
    flat = pc.list_flatten(item_ids).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return np.unique(flat[np.isin(flat, candidate_ids)], return_counts=True)


def _ranked_popular(ids: np.ndarray, counts: np.ndarray, candidate_ids: np.ndarray,
                    k: int) -> list[tuple[int, int, float]]:
    order = np.lexsort((ids, -counts))[:k]  # count desc, then item id asc
    return _popular_list([(int(ids[i]), float(counts[i])) for i in order], candidate_ids, k)


def _popular_list(chosen: list[tuple[int, float]], candidate_ids: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    if len(chosen) < k:
        taken = {i for i, _ in chosen}
        chosen += [(int(i), 0.0) for i in candidate_ids if int(i) not in taken][: k - len(chosen)]
    return [(rank, item, score) for rank, (item, score) in enumerate(chosen, start=1)]


def recommendations(
    model_rows: DataFrame, cold_users: DataFrame, popular: list[tuple[int, int, float]], *, ds: str,
    model_version: str,
) -> DataFrame:
    """The ``recommendations`` rows: model lists plus the popularity list for cold users."""
    from pyspark.sql import functions as F

    spark = model_rows.sparkSession
    pop = spark.createDataFrame(
        pa.table({"rank": pa.array([p[0] for p in popular], pa.int32()),
                  "item_id": pa.array([p[1] for p in popular], pa.int64()),
                  "score": pa.array([p[2] for p in popular], pa.float32())})
    )
    cold = cold_users.select("user_id").crossJoin(F.broadcast(pop)).withColumn("source", F.lit(SOURCE_POPULAR))
    warm = model_rows.withColumn("source", F.lit(SOURCE_MODEL))
    both = warm.unionByName(cold.select("user_id", "rank", "item_id", "score", "source"))
    return both.select(
        F.lit(ds).alias("ds"), "user_id", F.col("rank").cast("int"), "item_id",
        F.col("score").cast("float"), F.lit(model_version).alias("model_version"), "source",
    )
