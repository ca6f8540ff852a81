"""Scores from the stored candidate tables equal the model's own end-to-end score."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lime_helpers import right_aligned, times_for, tiny_config, tiny_model

from lime_model.model import LimeModel
from lime_model.scoring import fold_candidates, score_folded, score_from_tables

TOL = {"atol": 5e-5, "rtol": 1e-4}


@st.composite
def scoring_cases(draw: st.DrawFn) -> tuple[dict[str, object], list[list[int]], list[int], int]:
    heads = draw(st.sampled_from([1, 2, 4]))
    cfg = {"d_model": heads * draw(st.sampled_from([2, 4, 8])), "n_heads": heads,
           "n_links": draw(st.integers(1, 6)), "n_layers": draw(st.integers(1, 3)),
           "use_time_gaps": draw(st.booleans())}
    rows = draw(st.lists(st.lists(st.integers(1, 39), min_size=1, max_size=10), min_size=1, max_size=3))
    cands = draw(st.lists(st.integers(1, 39), min_size=1, max_size=12))
    return cfg, rows, cands, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha"])
@settings(max_examples=30, deadline=None)
@given(case=scoring_cases())
def test_scores_from_cached_tables_equal_end_to_end_forward_scores(kind: str, case: tuple) -> None:
    overrides, rows, cands, seed = case
    model = tiny_model(tiny_config(kind, **overrides), seed=seed)
    cfg = model.cfg
    history = right_aligned(rows, max(len(r) for r in rows))
    times = times_for(history, seed)
    cand_idx = torch.tensor(cands)
    with torch.no_grad():
        expected = model.forward_scores(history, times, cand_idx)  # (B, C)
        values = model.link_values(model.encode_links(history, times))
        tables = model.candidate_tables(cand_idx)
        from_tables = score_from_tables(values, tables.link_weights, tables.cand_vec, tables.bias,
                                        cfg.n_heads)
        folded = fold_candidates(tables.link_weights, tables.cand_vec, cfg.n_heads, cfg.n_links)
        one_gemm = values.reshape(len(rows), -1) @ folded.T + tables.bias
    assert expected.shape == (len(rows), len(cands))
    torch.testing.assert_close(from_tables, expected, **TOL)
    torch.testing.assert_close(one_gemm, expected, **TOL)
    torch.testing.assert_close(score_folded(values, folded, tables.bias), expected, **TOL)
    torch.testing.assert_close(model.table_scores(history, times, cand_idx), expected, **TOL)


def test_candidate_tables_have_the_stored_shapes_and_dtypes() -> None:
    model = tiny_model(tiny_config("lime-xor", d_model=16, n_heads=2, n_links=4))
    tables = model.candidate_tables(torch.tensor([3, 1, 2]))
    assert tables.link_weights.shape == (3, 2 * 4)
    assert tables.cand_vec.shape == (3, 16)
    assert tables.bias.shape == (3,)
    assert {tables.link_weights.dtype, tables.cand_vec.dtype, tables.bias.dtype} == {torch.float32}


def test_link_weights_are_a_softmax_over_links_per_head() -> None:
    model = tiny_model(tiny_config("lime-xor", n_heads=2, n_links=4))
    weights = model.candidate_tables(torch.arange(1, 40)).link_weights.view(39, 2, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(39, 2))
    assert (weights > 0).all()
    assert weights.std(dim=0).max() > 1e-3  # candidates route differently


def test_link_weights_use_raw_links_not_personalised_links() -> None:
    """Changing the user side (blocks, final norm, values) leaves the cached tables unchanged;
    changing the raw links L changes them."""
    model = tiny_model(tiny_config("lime-xor"))
    items = torch.arange(1, 40)
    before = model.candidate_tables(items).link_weights.clone()
    with torch.no_grad():
        for block in model.blocks:
            block.uqkv.weight.mul_(3.0)
        model.final_norm.weight.mul_(-2.0)
    torch.testing.assert_close(model.candidate_tables(items).link_weights, before)
    with torch.no_grad():
        model.links.add_(torch.randn_like(model.links))  # (a constant shift would vanish in LayerNorm)
    assert not torch.allclose(model.candidate_tables(items).link_weights, before)


def test_fold_candidates_places_weighted_candidate_vectors_per_head_block() -> None:
    # one candidate, 2 heads x 2 links, d = 4 (d_h = 2)
    weights = torch.tensor([[0.25, 0.75, 0.5, 0.5]])  # head 0: links (0.25, 0.75); head 1: (0.5, 0.5)
    cand_vec = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    folded = fold_candidates(weights, cand_vec, n_heads=2, n_links=2).view(2, 4)
    expected = torch.tensor([[0.25, 0.5, 1.5, 2.0],
                             [0.75, 1.5, 1.5, 2.0]])
    torch.testing.assert_close(folded, expected)


def test_score_from_tables_rejects_wrong_link_weight_width() -> None:
    with pytest.raises(ValueError, match="link_weights has 6 columns, expected n_heads\\*n_links = 8"):
        score_from_tables(torch.zeros(1, 4, 16), torch.zeros(3, 6), torch.zeros(3, 16), torch.zeros(3), 2)


def test_lime_model_refuses_a_non_lime_config() -> None:
    with pytest.raises(ValueError, match="LimeModel needs model 'lime-xor' or 'lime-mha', got 'popularity'"):
        LimeModel(tiny_config("popularity"))
