"""The first block's links are the parameter L, shared by every user: their projections, the
history <- links logits and values are built once per call (``history_from_shared_links``), and
links <- history folds from shorter histories on (``FOLD_MIN_KEYS_SHARED``)."""

from __future__ import annotations

import pytest
import torch
from lime_helpers import link_gradients_vs_dense, right_aligned, tiny_config, tiny_model

from lime_model.model import FOLD_MIN_KEYS, FOLD_MIN_KEYS_SHARED, LimeModel
from lime_model.reference import dense_encode_links

TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha"])
@pytest.mark.parametrize("layers", [1, 3])
def test_shared_fold_range_matches_dense_reference_values_and_gradients(kind: str, layers: int) -> None:
    """Histories long enough for the shared links to fold but not the per-user ones: the first
    block takes the shared forms, later blocks the per-user ones; a padded row rides along."""
    width = FOLD_MIN_KEYS_SHARED + 5
    assert width < FOLD_MIN_KEYS
    model = tiny_model(tiny_config(kind, n_layers=layers, max_history=width))
    assert isinstance(model, LimeModel)
    block = model.blocks[0]
    assert block.folds(4, width, shared=True) and not block.folds(4, width)
    assert not block.folds(4, FOLD_MIN_KEYS_SHARED - 1, shared=True)
    gen = torch.Generator().manual_seed(5)
    history = right_aligned([torch.randint(1, 40, (width,), generator=gen).tolist(), [3, 9, 27]], width)
    grads = link_gradients_vs_dense(model, history)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **TOL, msg=name)


def test_one_user_batches_take_the_shared_forms_in_every_block_and_agree_with_batched() -> None:
    """With one user, every block's links are shared by the batch (batch 1): the result must not
    depend on which form ran, so one user alone equals the same user inside a larger batch."""
    model = tiny_model(tiny_config("lime-xor", n_layers=3, max_history=FOLD_MIN_KEYS_SHARED + 1))
    gen = torch.Generator().manual_seed(7)
    rows = [torch.randint(1, 40, (FOLD_MIN_KEYS_SHARED + 1,), generator=gen).tolist(), [5, 6]]
    history = right_aligned(rows, FOLD_MIN_KEYS_SHARED + 1)
    with torch.no_grad():
        together = model.encode_links(history, None)
        alone = model.encode_links(history[:1], None)
        dense = dense_encode_links(model, history[:1], None)
    torch.testing.assert_close(alone, together[:1], **TOL)
    torch.testing.assert_close(alone, dense, **TOL)
