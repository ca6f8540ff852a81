"""Raw item id <-> model index.

Index 0 is padding (and "unknown"); real items get indices ``1..V`` in
ascending raw-id order, so the vocabulary is a pure function of the set of raw
ids and two trainings on the same data agree on it.
"""

from __future__ import annotations

import numpy as np

from lime_model.errors import VocabularyError

PADDING_INDEX = 0


class ItemVocabulary:
    """Sorted unique raw item ids; ``item_ids[i]`` is the raw id of model index ``i + 1``."""

    def __init__(self, item_ids: np.ndarray) -> None:
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise VocabularyError(f"item_ids must be a 1-D int64 array, got {ids.dtype} of shape {ids.shape}")
        if ids.size == 0:
            raise VocabularyError("an item vocabulary needs at least one item")
        if np.any(ids[1:] <= ids[:-1]):
            raise VocabularyError("item_ids must be strictly increasing (sorted, no duplicates)")
        if ids[0] < 0:
            raise VocabularyError(f"item ids must be >= 0, found {int(ids[0])}")
        self._ids = ids.copy()
        self._ids.setflags(write=False)

    @classmethod
    def from_raw(cls, raw_item_ids: np.ndarray) -> ItemVocabulary:
        """Build from any int64 array of raw ids (repeats allowed)."""
        raw = np.asarray(raw_item_ids)
        if raw.dtype != np.int64:
            raise VocabularyError(f"raw item ids must be int64, got {raw.dtype}")
        return cls(np.unique(raw))

    @property
    def item_ids(self) -> np.ndarray:
        """``(V,) int64``: raw id of index ``i + 1`` at position ``i`` (read-only)."""
        return self._ids

    @property
    def num_indices(self) -> int:
        """``V + 1``: the size of an embedding table over this vocabulary (``ModelConfig.num_items``)."""
        return len(self._ids) + 1

    def __len__(self) -> int:
        """``V``: the number of real items (padding not counted)."""
        return len(self._ids)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids ``(...) int64`` -> indices ``(...) int64``; unknown ids map to 0."""
        raw = np.asarray(raw)
        if raw.dtype != np.int64:
            raise VocabularyError(f"raw item ids must be int64, got {raw.dtype}")
        pos = np.searchsorted(self._ids, raw)
        clipped = np.minimum(pos, len(self._ids) - 1)
        known = self._ids[clipped] == raw
        return np.where(known, clipped + 1, PADDING_INDEX).astype(np.int64)

    def decode(self, index: np.ndarray) -> np.ndarray:
        """Indices ``(...) int64`` in ``1..V`` -> raw ids; index 0 (or anything out of range) -> -1."""
        index = np.asarray(index, dtype=np.int64)
        valid = (index >= 1) & (index <= len(self._ids))
        return np.where(valid, self._ids[np.clip(index - 1, 0, len(self._ids) - 1)], -1).astype(np.int64)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemVocabulary) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> int:
        return hash(self._ids.tobytes())

    def __repr__(self) -> str:
        return f"ItemVocabulary({len(self)} items)"
