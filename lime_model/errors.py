"""Errors raised by the model package.

One small class per failure so that callers (jobs, DAG tasks, tests) can catch
exactly what they mean to.  Every error of the product derives from
:class:`LimeRankError`.
"""

from __future__ import annotations


class LimeRankError(Exception):
    """Base class of every error LIME Rank raises on purpose."""


class DatasetError(LimeRankError):
    """An input data set could not be fetched, verified or parsed."""


class DatasetFetchError(DatasetError):
    """Downloading a public data set failed (no network, package index down)."""


class DatasetChecksumError(DatasetError):
    """A fetched data file does not have the sha256 it must have."""


class InteractionsSchemaError(DatasetError):
    """An interactions file lacks a required column or has a wrong type."""


class CheckpointError(LimeRankError):
    """A checkpoint cannot be used."""


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint path does not exist."""


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file is truncated, unreadable or fails its content hash."""


class CheckpointNaNError(CheckpointError):
    """A checkpoint tensor holds NaN or infinite values."""


class CheckpointConfigMismatchError(CheckpointError):
    """The stored weights do not fit the stored (or the expected) config."""


class ModelConfigError(LimeRankError, ValueError):
    """A model configuration is invalid (unknown model kind, bad size, missing field)."""


class VocabularyError(LimeRankError, ValueError):
    """An item vocabulary cannot be built from the given ids (not 1-D int64, negative, duplicates)."""


class InsufficientDataError(DatasetError):
    """The interactions leave no user to train on or to evaluate."""
