"""Batched user-side inference for the user_links table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lime_helpers import tiny_config, tiny_model

from lime_model.inference import encode_histories, length_batches, padded_length

CPU = torch.device("cpu")


def _direct(model: torch.nn.Module, history: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    h = torch.from_numpy(history[None])
    t = None if times is None else torch.from_numpy(times[None])
    with torch.no_grad():
        return model.encode_links(h, t).reshape(-1).numpy()


def test_encode_histories_equals_one_user_at_a_time_in_input_order() -> None:
    model = tiny_model(tiny_config("lime-xor", use_time_gaps=True, max_history=8))
    rng = np.random.default_rng(0)
    lengths = [3, 1, 12, 5, 8, 2, 7]
    histories = [rng.integers(1, 40, size=n).astype(np.int64) for n in lengths]
    times = [np.sort(rng.uniform(8e8, 9e8, size=n)) for n in lengths]
    # 20 tokens per batch forces several batches of different sizes
    out = encode_histories(model, histories, times, CPU, max_tokens_per_batch=20)
    assert out.shape == (7, 4 * 16)
    assert out.dtype == np.float32
    for i, (h, t) in enumerate(zip(histories, times, strict=True)):
        np.testing.assert_allclose(out[i], _direct(model, h[-8:], t[-8:]), rtol=1e-4, atol=2e-5)


def test_encode_histories_keeps_only_the_newest_max_history_items() -> None:
    model = tiny_model(tiny_config("lime-mha", max_history=4))
    long = np.array([9, 9, 9, 1, 2, 3, 4], dtype=np.int64)
    out = encode_histories(model, [long, long[-4:]], None, CPU)
    np.testing.assert_array_equal(out[0], out[1])


def test_encode_histories_rejects_an_empty_history() -> None:
    model = tiny_model(tiny_config("lime-xor"))
    with pytest.raises(ValueError, match="history 1 is empty: a user without history gets no L_P"):
        encode_histories(model, [np.array([1], dtype=np.int64), np.array([], dtype=np.int64)], None, CPU)


def test_encode_histories_rejects_out_of_vocabulary_indices() -> None:
    model = tiny_model(tiny_config("lime-xor"))
    with pytest.raises(ValueError, match=r"history 0 holds indices outside 1\.\.39"):
        encode_histories(model, [np.array([0, 3], dtype=np.int64)], None, CPU)


def test_encode_histories_refuses_the_skyline() -> None:
    model = tiny_model(tiny_config("sasrec"))
    with pytest.raises(ValueError, match="encode_histories needs a LIME model, got 'sasrec'"):
        encode_histories(model, [np.array([3], dtype=np.int64)], None, CPU)


def test_length_batches_bound_tokens_and_cover_every_user_once() -> None:
    lengths = np.array([5, 100, 1, 30, 30, 7, 64])
    batches = length_batches(lengths, max_tokens_per_batch=64, limit=100)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 64
    assert [lengths[b].tolist() for b in batches] == [[100], [64], [30, 30], [7], [5], [1]]


def test_padded_length_is_exact_for_short_histories_and_within_an_eighth_beyond() -> None:
    assert [padded_length(n, 200) for n in (1, 7, 64)] == [1, 7, 64]
    for n in range(65, 5000):
        assert n <= padded_length(n, 5000) <= n * 1.125
    assert padded_length(65, 200) == padded_length(72, 200) == 72
    assert padded_length(200, 200) == 200  # rounded up it would be 208: never past the model's max_history


def test_histories_as_long_as_max_history_are_encoded(tmp_path) -> None:
    model = tiny_model(tiny_config("lime-xor", max_history=200))
    histories = [np.arange(1, 201, dtype=np.int64) % 39 + 1, np.arange(1, 196, dtype=np.int64) % 39 + 1]
    assert encode_histories(model, histories, None, CPU).shape == (2, 4 * 16)


def test_an_encoded_user_barely_depends_on_who_else_is_in_the_run(tmp_path) -> None:
    """A user's padding depends on their own length only, so encoding some users (an incremental
    night) gives their L_P of a full night up to GEMM rounding (~4e-7 here), not up to the
    rounding of other padded widths (~1e-5 with the widths of a batch's longest history)."""
    from lime_model.checkpoint import build_model, load_checkpoint
    from lime_model.synthetic import random_checkpoint

    random_checkpoint(tmp_path / "m.ckpt", np.arange(1, 3000), seed=0, d_model=32, n_heads=2, n_links=8,
                      n_layers=2, max_history=50, use_time_gaps=True)
    model = build_model(load_checkpoint(tmp_path / "m.ckpt"))
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 3000, size=int(n)).astype(np.int64) for n in rng.integers(1, 51, size=3000)]
    times = [np.sort(rng.uniform(1.7e9, 1.71e9, size=len(h))) for h in histories]
    everyone = encode_histories(model, histories, times, CPU)
    some = encode_histories(model, histories[::3], times[::3], CPU, max_tokens_per_batch=4096)
    assert np.abs(everyone[::3] - some).max() < 1e-6


def test_encode_histories_restores_training_mode() -> None:
    model = tiny_model(tiny_config("lime-xor")).train()
    encode_histories(model, [np.array([3, 4], dtype=np.int64)], None, CPU)
    assert model.training
