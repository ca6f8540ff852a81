"""Initialisation by module type (``init_module``): every parameter of every network gets a rule."""

from __future__ import annotations

import pytest
import torch

from lime_model.config import ModelConfig
from lime_model.model import (
    CausalBlock,
    IdentityLinear,
    ReadBlock,
    RoutingLinear,
    XorBlock,
    create_model,
    init_weights,
)


@pytest.mark.parametrize("kind", ["lime-xor", "lime-mha", "sasrec"])
def test_every_parameter_is_initialised_by_its_module_type(kind: str) -> None:
    """A parameter no rule covers would keep the NaN it is poisoned with here."""
    net = create_model(ModelConfig(model=kind, num_items=50, d_model=16, n_links=4, n_layers=3,
                                   max_history=12, use_time_gaps=True))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    init_weights(net)
    untouched = [name for name, p in net.named_parameters() if torch.isnan(p).any()]
    assert not untouched
    assert torch.equal(net.embed.item.weight[0], torch.zeros(16))  # padding row


def test_block_types_follow_the_model_kind() -> None:
    def kinds(kind: str) -> list[type]:
        net = create_model(ModelConfig(model=kind, num_items=50, d_model=16, n_links=4, n_layers=3))
        return [type(b) for b in net.blocks]

    assert kinds("lime-xor") == [XorBlock, XorBlock, ReadBlock]  # the last block only reads
    assert kinds("lime-mha") == [ReadBlock] * 3
    assert kinds("sasrec") == [CausalBlock] * 3


def test_routing_maps_start_at_unit_gain_and_block_projections_small() -> None:
    torch.manual_seed(0)
    net = create_model(ModelConfig(model="lime-xor", num_items=50, d_model=64, n_links=4))
    assert isinstance(net.cand_query, RoutingLinear) and isinstance(net.link_key, RoutingLinear)
    assert 0.1 < float(net.cand_query.weight.detach().std()) < 0.15  # 64 ** -0.5 = 0.125
    assert 0.015 < float(net.blocks[0].uqkv.weight.detach().std()) < 0.025
    assert float(net.links.detach().std()) > 0.8


def test_value_and_output_maps_start_at_the_identity() -> None:
    """A fresh model scores a candidate as the dot product of its embedding with the links it routes
    to, plus its bias: no near-zero map between the item embeddings and the score."""
    torch.manual_seed(0)
    net = create_model(ModelConfig(model="lime-xor", num_items=50, d_model=16, n_links=4)).eval()
    for layer in (net.value, net.out):
        assert isinstance(layer, IdentityLinear)
        assert torch.equal(layer.weight, torch.eye(16)) and torch.equal(layer.bias, torch.zeros(16))
    history = torch.tensor([[0, 3, 7], [5, 9, 2]])
    items = torch.arange(1, 50)
    with torch.no_grad():
        l_p = net.encode_links(history, None)  # (2, 4, 16)
        weights = net.candidate_tables(items).link_weights.view(49, 2, 4)  # (C, H, ell)
        per_head = l_p.view(2, 4, 2, 8)  # (B, ell, H, d_h)
        mixed = torch.einsum("chk,bkhe->bche", weights, per_head).reshape(2, 49, 16)  # (B, C, d)
        expected = (mixed * net.embed.item(items)).sum(-1)  # (B, C)
        torch.testing.assert_close(net.forward_scores(history, None, items), expected)
