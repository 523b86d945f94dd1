"""Fast paths added for the benchmarks, checked against the plain formulation (gradients included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydranet.models.encoders.embedding import Embedding
from hydranet.models.trunks.omoe import OMoE


@pytest.mark.parametrize("threads", [1, 2])
def test_feature_encoder_gradient_equals_nn_embedding(threads):
    # The encoder gathers rows with index_select (one thread) or the flattened table with
    # gather (several threads), each a cheap backward on CPU; values and the table's gradient
    # must equal nn.Embedding's, repeated indices included, on both paths.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        cards = [3, 1, 6, 2]
        encoder = Embedding({"kind": "categorical", "cardinalities": cards}, dim=4)
        assert encoder._flat_gather(encoder.embedding.weight) == (threads > 1)
        cat = torch.stack([torch.randint(0, c, (64,)) for c in cards], dim=1)
        weights = torch.randn(64, encoder.out_dim)
        (encoder(cat) * weights).sum().backward()
        table = encoder.embedding.weight.detach().clone().requires_grad_()
        plain = F.embedding(cat + encoder.offsets, table).flatten(1)
        (plain * weights).sum().backward()
        torch.testing.assert_close(encoder(cat), plain, rtol=0, atol=0)
        torch.testing.assert_close(encoder.embedding.weight.grad, table.grad)
        with torch.no_grad():  # inference takes the row path whatever the threads
            assert not encoder._flat_gather(encoder.embedding.weight)
            torch.testing.assert_close(encoder(cat), plain, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


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


def test_gate_softmax_equals_softmax_in_values_gradients_and_layout():
    from hydranet.models.blocks import gate_softmax

    torch.manual_seed(0)
    b = 64
    x_in = torch.randn(b, 5)
    cases = []
    for t, e in [(3, 8), (1, 2), (4, 5), (2, 16), (2, 40)]:  # below 8 experts: the fast path
        # gates come as a transposed view of one GEMM: [B, T*E] -> [T, B, E]
        cases.append((x_in @ torch.randn(5, t * e)).view(b, t, e).transpose(0, 1))
    cases.append(x_in @ torch.randn(5, 12))  # one [B, E] gate (PLE's shared gate)
    for logits in cases:
        x = logits.detach().requires_grad_(True)
        ref_x = logits.detach().clone().requires_grad_(True)
        y, ref = gate_softmax(x), ref_x.softmax(dim=-1)
        assert y.shape == ref.shape and y.is_contiguous()
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-7)
        cot = torch.randn_like(y)
        (y * cot).sum().backward()
        (ref * cot).sum().backward()
        torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["gemm_view", "contiguous"])
def test_mix_experts_equals_einsum_in_values_and_gradients(layout):
    # The CPU fast path (broadcast multiply, sum over experts) is taken only for the strided
    # [E, B, H] view of one [B, E*H] GEMM; a contiguous [E, B, H] takes einsum. Both must
    # equal the plain contraction, gradients to experts and gates included.
    from hydranet.models import blocks

    torch.manual_seed(0)
    e, b, h, t = 5, 33, 6, 3
    flat = torch.randn(b, e * h, dtype=torch.float64)
    if layout == "gemm_view":
        base = flat.clone().requires_grad_(True)
        experts = base.view(b, e, h).transpose(0, 1)
        assert experts.transpose(0, 1).is_contiguous()
    else:
        base = flat.view(b, e, h).transpose(0, 1).contiguous().requires_grad_(True)
        experts = base
    probs = torch.randn(t, b, e, dtype=torch.float64).softmax(-1).requires_grad_(True)
    out = blocks.mix_experts(experts, probs)
    assert out.shape == (t, b, h)
    ref_experts = experts.detach().clone().requires_grad_(True)
    ref_probs = probs.detach().clone().requires_grad_(True)
    ref = torch.stack(
        [sum(ref_probs[k, :, i, None] * ref_experts[i] for i in range(e)) for k in range(t)]
    )
    torch.testing.assert_close(out, ref)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad((out * cot).sum(), [base, probs])
    ref_grads = torch.autograd.grad((ref * cot).sum(), [ref_experts, ref_probs])
    grad_experts = grads[0].view(b, e, h).transpose(0, 1) if layout == "gemm_view" else grads[0]
    torch.testing.assert_close(grad_experts, ref_grads[0])
    torch.testing.assert_close(grads[1], ref_grads[1])


def test_mse_loss_matches_torch_bit_for_bit():
    from hydranet.tasks import mse_loss

    torch.manual_seed(0)
    pred = torch.randn(257, 1, requires_grad=True)
    target = torch.randn(257, 1)
    ours = mse_loss(pred, target)
    ref = F.mse_loss(pred, target, reduction="none")
    assert torch.equal(ours, ref)
    cot = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad(ours, pred, cot)
    (g_ref,) = torch.autograd.grad(ref, pred, cot)
    assert torch.equal(g_ours, g_ref)
