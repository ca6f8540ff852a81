"""The linear-time link encoders against the dense masked reference, and their invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lime_helpers import link_gradients_vs_dense, right_aligned, times_for, tiny_config, tiny_model

from lime_model.model import FOLD_MIN_KEYS, LimeModel, SASRecModel, time_gap_buckets
from lime_model.reference import dense_encode_links, link_mask

TOL = {"atol": 2e-5, "rtol": 1e-4}


@st.composite
def encoder_cases(draw: st.DrawFn) -> tuple[dict[str, object], list[list[int]], int]:
    heads = draw(st.sampled_from([1, 2, 4]))
    cfg = {"d_model": heads * draw(st.sampled_from([2, 4, 8])), "n_heads": heads,
           "n_links": draw(st.integers(1, 6)), "n_layers": draw(st.integers(1, 3)),
           "use_time_gaps": draw(st.booleans()), "newest_to_links": draw(st.booleans()), "max_history": 16}
    width = draw(st.integers(1, 16))
    rows = draw(st.lists(st.lists(st.integers(1, 39), min_size=1, max_size=width), min_size=1, max_size=4))
    return cfg, rows, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha"])
@settings(max_examples=40, deadline=None)
@given(case=encoder_cases())
def test_fast_link_encoder_equals_dense_masked_reference(kind: str, case: tuple) -> None:
    overrides, rows, seed = case
    # float64: with d_model 2 the LayerNorms amplify float32 rounding past any useful tolerance
    model = tiny_model(tiny_config(kind, **overrides), seed=seed).double()
    history = right_aligned(rows, max(len(r) for r in rows))
    times = times_for(history, seed)
    with torch.no_grad():
        fast = model.encode_links(history, times)
        dense = dense_encode_links(model, history, times)
    assert fast.shape == (len(rows), model.cfg.n_links, model.cfg.d_model)
    torch.testing.assert_close(fast, dense, **TOL)


@pytest.mark.parametrize(("kind", "heads", "links", "folds"), [
    ("lime-xor", 2, 4, True), ("lime-xor", 4, 6, False), ("lime-mha", 2, 4, True), ("lime-mha", 4, 6, False)])
def test_folded_and_projected_history_attention_match_reference_values_and_gradients(
        kind: str, heads: int, links: int, folds: bool) -> None:
    """Both forms of links <- history (K, V folded into the queries, or projected) are taken,
    and training through either gets the dense reference's gradients."""
    width = FOLD_MIN_KEYS + 3
    model = tiny_model(tiny_config(kind, n_heads=heads, n_links=links, d_model=16, max_history=width,
                                   newest_to_links=folds))
    assert isinstance(model, LimeModel)
    assert model.blocks[0].folds(links, width) is folds
    assert not model.blocks[0].folds(links, FOLD_MIN_KEYS - 1)  # short histories: always projected
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(1, 40, (width,), generator=gen).tolist(), [2, 4]]
    history = right_aligned(rows, width)
    grads = link_gradients_vs_dense(model, history)
    assert grads[0].keys() == grads[1].keys()
    assert any(name.endswith("uqkv.weight") for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **TOL, msg=name)


def test_xor_mask_lets_exactly_links_and_history_see_each_other() -> None:
    valid = torch.tensor([[False, True, True]])
    allowed = link_mask(2, valid, xor=True)[0].long()
    # rows: 2 links then 3 history tokens (the first is padding); columns: keys in the same order
    expected = torch.tensor([[0, 0, 0, 1, 1],
                             [0, 0, 0, 1, 1],
                             [1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0]])
    torch.testing.assert_close(allowed, expected)


def test_xor_encoder_differs_from_mha_encoder_with_same_weights() -> None:
    """Guards against the XOR path silently skipping the history update of inner blocks."""
    xor = tiny_model(tiny_config("lime-xor"))
    mha = LimeModel(tiny_config("lime-mha")).eval()
    mha.load_state_dict(xor.state_dict())
    history = right_aligned([[3, 5, 7, 9]], 4)
    with torch.no_grad():
        assert not torch.allclose(xor.encode_links(history, None), mha.encode_links(history, None), atol=1e-3)


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha"])
def test_link_encoder_is_invariant_to_left_padding(kind: str) -> None:
    model = tiny_model(tiny_config(kind, use_time_gaps=True))
    short = right_aligned([[4, 8, 15, 16, 23]], 5)
    long = right_aligned([[4, 8, 15, 16, 23]], 24)
    with torch.no_grad():
        a = model.encode_links(short, times_for(short))
        long_times = torch.cat([torch.zeros(1, 19, dtype=torch.float64), times_for(short)], 1)
        b = model.encode_links(long, long_times)
    torch.testing.assert_close(a, b, **TOL)


def test_link_encoder_rows_are_independent_of_batch_mates() -> None:
    model = tiny_model(tiny_config("lime-xor"))
    batch = right_aligned([[1, 2, 3], [7], [9, 9, 9]], 3)
    with torch.no_grad():
        together = model.encode_links(batch, None)
        alone = model.encode_links(right_aligned([[7]], 1), None)
    torch.testing.assert_close(together[1:2], alone, **TOL)


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha", "sasrec"])
def test_one_item_history_gives_finite_output(kind: str) -> None:
    model = tiny_model(tiny_config(kind, use_time_gaps=True))
    history = right_aligned([[11], [12]], 24)
    times = times_for(history)
    with torch.no_grad():
        scores = model.forward_scores(history, times, torch.arange(1, 40))
    assert scores.shape == (2, 39)
    assert torch.isfinite(scores).all()


def test_full_attention_user_vector_is_invariant_to_left_padding() -> None:
    model = tiny_model(tiny_config("sasrec", use_time_gaps=True))
    assert isinstance(model, SASRecModel)
    short = right_aligned([[4, 8, 15, 16, 23], [5, 6, 7, 8, 9]], 5)
    padded = right_aligned([[4, 8, 15, 16, 23], [5, 6, 7, 8, 9]], 11)
    mixed = right_aligned([[4, 8, 15, 16, 23], [1, 2, 3, 5, 6, 7, 8, 9]], 8)
    short_times = times_for(short)
    mixed_times = times_for(mixed)
    mixed_times[0, 3:] = short_times[0]
    with torch.no_grad():
        a = model.encode_user(short, short_times)
        b = model.encode_user(padded, torch.cat([torch.zeros(2, 6, dtype=torch.float64), short_times], 1))
        c = model.encode_user(mixed, mixed_times)
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(a[0], c[0], **TOL)  # row 0 sits beside a longer row in `mixed`


def test_sasrec_training_outputs_are_causal_and_equal_the_served_user_vector() -> None:
    """Position i's training output ignores later items (a non-causal encoder fails this), and it
    is the user vector served for the prefix that ends at i (the last block's single query)."""
    model = tiny_model(tiny_config("sasrec", use_time_gaps=True))
    assert isinstance(model, SASRecModel)
    items = torch.tensor([[4, 8, 15, 16, 23]])
    times = torch.tensor([[10.0, 20.0, 400.0, 500.0, 9000.0]], dtype=torch.float64)
    later = torch.tensor([[4, 8, 15, 30, 31]])
    with torch.no_grad():
        seq = model.encode_sequence(items, times)  # (1, 5, d)
        changed = model.encode_sequence(later, times)
        served = [model.encode_user(right_aligned([items[0, :i + 1].tolist()], 6),
                                    torch.cat([torch.zeros(1, 5 - i, dtype=torch.float64), times[:, :i + 1]], 1))
                  for i in range(5)]
    torch.testing.assert_close(seq[:, :3], changed[:, :3], **TOL)
    assert not torch.allclose(seq[:, 3:], changed[:, 3:], atol=1e-4)
    torch.testing.assert_close(torch.cat(served), seq[0], **TOL)


def test_history_longer_than_max_history_is_rejected() -> None:
    model = tiny_model(tiny_config("lime-xor", max_history=4))
    with pytest.raises(ValueError, match="history has 5 columns, the model accepts at most max_history=4"):
        model.encode_links(right_aligned([[1, 2, 3, 4, 5]], 5), None)


def test_time_gap_model_requires_timestamps() -> None:
    model = tiny_model(tiny_config("lime-xor", use_time_gaps=True))
    with pytest.raises(ValueError, match=r"uses time gaps .* pass timestamps"):
        model.encode_links(right_aligned([[1, 2]], 2), None)


def test_time_gap_buckets_are_log2_of_gap_to_newest_item() -> None:
    times = torch.tensor([[0.0, 1000.0, 1006.0, 1007.0]], dtype=torch.float64)
    # gaps to the newest (1007): 1007, 7, 1, 0 -> floor(log2(gap + 1)) = 9, 3, 1, 0
    assert time_gap_buckets(times, 32).tolist() == [[9, 3, 1, 0]]
    assert time_gap_buckets(times, 4).tolist() == [[3, 3, 1, 0]]
