"""Batched fast paths against plain reference loops on the same weights.

Each batched block (experts in one matmul, gates in one GEMM, towers batched,
one embedding table with offsets) is rebuilt as the obvious Python loop of
``nn.Linear`` / ``nn.Embedding`` modules holding the same weight slices; both
must agree on the forward pass and on the gradient w.r.t. the input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hydranet.models.blocks import MLP, BatchedLinear, BatchedMLP
from hydranet.models.encoders import InputEncoder
from hydranet.models.encoders.embedding import Embedding
from hydranet.models.model import Towers
from hydranet.models.trunks.cgc import CGC, CGCLayer
from hydranet.models.trunks.mmoe import MMoE
from hydranet.models.trunks.ple import PLE
from hydranet.spec import ModelSpec

TASKS = ["a", "b", "c"]
TOL = {"rtol": 1e-5, "atol": 1e-6}


def linear_from(batched: BatchedLinear, g: int) -> nn.Linear:
    """Group ``g`` of a BatchedLinear as an ordinary nn.Linear (weight is [out, in])."""
    layer = nn.Linear(batched.in_dim, batched.out_dim)
    with torch.no_grad():
        layer.weight.copy_(batched.weight[g].T)
        layer.bias.copy_(batched.bias[g])
    return layer


def mlps_from(batched: BatchedMLP) -> list[nn.Sequential]:
    """The G separate MLPs a BatchedMLP stands for (activations reused as they are)."""
    return [
        nn.Sequential(
            *(linear_from(m, g) if isinstance(m, BatchedLinear) else m for m in batched.net)
        )
        for g in range(batched.groups)
    ]


def check_forward_and_input_grad(fast, reference, *inputs):
    """Same outputs, and same d(random projection of outputs)/d(inputs)."""
    leaves_fast = [x.clone().requires_grad_() for x in inputs]
    leaves_ref = [x.clone().requires_grad_() for x in inputs]
    out_fast, out_ref = fast(*leaves_fast), reference(*leaves_ref)
    torch.testing.assert_close(out_fast, out_ref, **TOL)
    probe = torch.randn_like(out_ref)
    (out_fast * probe).sum().backward()
    (out_ref * probe).sum().backward()
    for a, b in zip(leaves_fast, leaves_ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, **TOL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("per_group", [False, True])
def test_batched_mlp_equals_a_loop_of_mlps(per_group):
    batched = BatchedMLP(4, 6, [5, 3], activation="tanh")
    mlps = mlps_from(batched)
    x = torch.randn(4, 7, 6) if per_group else torch.randn(7, 6)

    def reference(x):
        return torch.stack([mlp(x[g] if per_group else x) for g, mlp in enumerate(mlps)])

    check_forward_and_input_grad(batched, reference, x)


def test_batched_linear_init_matches_nn_linear_bounds():
    batched = BatchedLinear(3, 50, 20)
    bound = 1 / 50**0.5
    assert batched.weight.abs().max() <= bound and batched.bias.abs().max() <= bound
    assert batched.weight.abs().max() > 0.9 * bound  # uniform over the full range


def test_mlp_with_no_hidden_layers_is_the_identity():
    x = torch.randn(3, 4)
    assert MLP(4, []).out_dim == 4 and torch.equal(MLP(4, [])(x), x)
    assert torch.equal(BatchedMLP(2, 4, [])(x), x.expand(2, 3, 4))


def test_mmoe_equals_a_loop_over_experts():
    trunk = MMoE(6, TASKS, num_experts=5, expert_hidden=[8, 4], activation="gelu")
    experts = mlps_from(trunk.experts)
    gates = [linear_from(trunk.gates, t) for t in range(len(TASKS))]

    def reference(x):
        outs = [e(x) for e in experts]  # E x [B, H]
        tasks = []
        for gate in gates:
            p = gate(x).softmax(dim=-1)  # [B, E]
            tasks.append(sum(p[:, e : e + 1] * outs[e] for e in range(len(outs))))
        return torch.stack(tasks)

    def fast(x):
        out = trunk(x)
        return torch.stack([out[t] for t in TASKS])

    check_forward_and_input_grad(fast, reference, torch.randn(9, 6))


def reference_level(layer: CGCLayer, n_shared: int, n_task: int, inputs: list[torch.Tensor]):
    """One CGC/PLE level as loops; ``inputs`` holds one tensor per path (tasks, then shared)."""
    n_tasks = layer.n_tasks
    experts = mlps_from(layer.experts)
    outs = []
    for t in range(n_tasks):  # task t's experts read path t
        outs += [experts[t * n_task + k](inputs[t]) for k in range(n_task)]
    first_shared = n_tasks * n_task
    outs += [experts[first_shared + k](inputs[n_tasks]) for k in range(n_shared)]
    paths = []
    for t in range(n_tasks):
        chosen = [outs[t * n_task + k] for k in range(n_task)] + outs[first_shared:]
        p = linear_from(layer.task_gates, t)(inputs[t]).softmax(dim=-1)
        paths.append(sum(p[:, i : i + 1] * h for i, h in enumerate(chosen)))
    if layer.shared_gate is not None:
        p = layer.shared_gate(inputs[n_tasks]).softmax(dim=-1)
        paths.append(sum(p[:, i : i + 1] * h for i, h in enumerate(outs)))
    return paths


def test_cgc_equals_a_loop_over_experts():
    trunk = CGC(6, TASKS, num_shared_experts=2, num_task_experts=3, expert_hidden=[5])

    def reference(x):
        return torch.stack(reference_level(trunk.layer, 2, 3, [x] * (len(TASKS) + 1)))

    def fast(x):
        out = trunk(x)
        return torch.stack([out[t] for t in TASKS])

    check_forward_and_input_grad(fast, reference, torch.randn(9, 6))


def test_ple_equals_a_loop_over_levels_and_experts():
    trunk = PLE(
        6, TASKS, num_levels=3, num_shared_experts=1, num_task_experts=2, expert_hidden=[5, 4]
    )

    def reference(x):
        paths = [x] * (len(TASKS) + 1)
        for level in trunk.levels:
            paths = reference_level(level, 1, 2, paths)
        return torch.stack(paths)

    def fast(x):
        out = trunk(x)
        return torch.stack([out[t] for t in TASKS])

    check_forward_and_input_grad(fast, reference, torch.randn(9, 6))


@pytest.mark.parametrize("heads", [{"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 4, "c": 2}])
def test_batched_towers_equal_one_mlp_and_linear_per_task(heads):
    towers = Towers(dict.fromkeys(heads, 6), heads, [5, 3], activation="silu")
    hidden = mlps_from(towers.hidden)
    if towers.final is not None:
        finals = [linear_from(towers.final, i) for i in range(len(heads))]
    else:
        finals = [towers.finals[t] for t in heads]

    def reference(h):
        return torch.cat([finals[i](hidden[i](h[i])) for i in range(len(heads))], dim=1)

    def fast(h):
        out = towers({t: h[i] for i, t in enumerate(heads)})
        return torch.cat([out[t] for t in heads], dim=1)

    check_forward_and_input_grad(fast, reference, torch.randn(3, 7, 6))


def test_embedding_encoder_equals_one_embedding_per_feature():
    cards = [3, 1, 6]
    encoder = Embedding({"kind": "categorical", "cardinalities": cards}, dim=4)
    tables, start = [], 0
    for c in cards:
        tables.append(encoder.embedding.weight[start : start + c])
        start += c
    cat = torch.stack([torch.randint(0, c, (8,)) for c in cards], dim=1)
    reference = torch.cat([tables[j][cat[:, j]] for j in range(len(cards))], dim=1)
    torch.testing.assert_close(encoder(cat), reference, rtol=0, atol=0)
    assert encoder.out_dim == 3 * 4


def test_input_encoder_concatenates_the_groups_in_order():
    spec = ModelSpec(embedding_dim=4)
    num = torch.randn(5, 3)
    cat = torch.zeros(5, 2, dtype=torch.long)
    numeric_only = InputEncoder({"numeric": {"kind": "numeric", "width": 3}}, spec)
    assert numeric_only.out_dim == 3
    assert torch.equal(numeric_only({"numeric": num}), num)
    both = InputEncoder(
        {
            "categorical": {"kind": "categorical", "cardinalities": [2, 3]},
            "numeric": {"kind": "numeric", "width": 3},
        },
        spec,
    )
    out = both({"categorical": cat, "numeric": num})
    assert out.shape == (5, 2 * 4 + 3) and both.out_dim == 11
    torch.testing.assert_close(out[:, :8], both.encoders["categorical"](cat), rtol=0, atol=0)
    assert torch.equal(out[:, 8:], num)
