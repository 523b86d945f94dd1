"""Fast paths added for the benchmarks, checked against the plain formulation (gradients included)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hydranet.models.embedding import FeatureEncoder
from hydranet.models.trunks.omoe import OMoE


def test_feature_encoder_gradient_equals_nn_embedding():
    # The encoder gathers rows with index_select (a cheap index_add_ backward on CPU);
    # values and the table's gradient must equal nn.Embedding's, repeated indices included.
    torch.manual_seed(0)
    cards = [3, 1, 6, 2]
    encoder = FeatureEncoder(cards, n_numeric=2, embedding_dim=4)
    cat = torch.stack([torch.randint(0, c, (64,)) for c in cards], dim=1)
    num = torch.randn(64, 2)
    weights = torch.randn(64, encoder.out_dim)
    (encoder(cat, num) * weights).sum().backward()
    table = encoder.embedding.weight.detach().clone().requires_grad_()
    plain = torch.cat([F.embedding(cat + encoder.offsets, table).flatten(1), num], dim=1)
    (plain * weights).sum().backward()
    torch.testing.assert_close(encoder(cat, num), plain)
    torch.testing.assert_close(encoder.embedding.weight.grad, table.grad)


def test_omoe_equals_one_softmax_gate_over_a_loop_of_experts():
    torch.manual_seed(0)
    trunk = OMoE(5, ["a", "b", "c"], num_experts=3, expert_hidden=[4])
    x = torch.randn(7, 5, requires_grad=True)
    out = trunk(x)
    w, b = trunk.experts.net[0].weight, trunk.experts.net[0].bias  # [E, in, H], [E, H]
    experts = [torch.relu(x @ w[e] + b[e]) for e in range(3)]
    gate = (x @ trunk.gates.weight[0] + trunk.gates.bias[0]).softmax(-1)  # [B, E]
    reference = sum(gate[:, e : e + 1] * experts[e] for e in range(3))
    for t in ("a", "b", "c"):
        torch.testing.assert_close(out[t], reference)
    grad_fast = torch.autograd.grad(out["a"].sum(), x, retain_graph=True)[0]
    grad_ref = torch.autograd.grad(reference.sum(), x)[0]
    torch.testing.assert_close(grad_fast, grad_ref)
    assert {id(p) for p in trunk.shared_parameters()} == {id(p) for p in trunk.parameters()}
