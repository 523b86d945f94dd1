"""Contract tests for every registered trunk, generated from ``TRUNKS.names()``.

A new architecture registered in ``hydranet.models.trunks`` is picked up here
without anyone writing a test: shapes, gradients reaching every parameter,
safetensors round trip, determinism, a short training run, the shared/task split
and its representation-gradient protocol, and dtype moves.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from hydranet.errors import UserError
from hydranet.models.model import MultiTaskModel
from hydranet.models.trunks import TRUNKS, Trunk
from hydranet.spec import ModelSpec

ARCHITECTURES = TRUNKS.names()
CARDS = [3, 5, 4]
N_NUMERIC = 3
HEADS = {"click": 1, "value": 1, "kind": 3}

# Trunks whose task-specific gates read the trunk input x directly: under rep
# gradients the gates' share of the encoder gradient is (knowingly) dropped.
GATES_READ_INPUT = {"mmoe", "cgc"}


GROUPS = {
    "categorical": {"kind": "categorical", "cardinalities": CARDS},
    "numeric": {"kind": "numeric", "width": N_NUMERIC},
}


# Trunks whose defaults are too wide for a 2-core test run (tabm: 32 members of width 512)
SMALL_PARAMS = {"tabm": {"k": 4, "d_block": 32, "n_blocks": 2}}


def build(architecture: str, heads=HEADS, seed: int = 0, **spec) -> MultiTaskModel:
    torch.manual_seed(seed)
    spec.setdefault("params", SMALL_PARAMS.get(architecture, {}))
    model_spec = ModelSpec(architecture=architecture, embedding_dim=3, tower=[8], **spec)
    return MultiTaskModel(GROUPS, heads, model_spec)


def batch(n: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    """The batch format's features: one tensor per group."""
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    return {"categorical": cat, "numeric": torch.randn(n, N_NUMERIC, generator=g)}


def total_loss(outputs: dict[str, torch.Tensor], seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sum(
        F.mse_loss(out, torch.randn(out.shape, generator=g, dtype=out.dtype))
        for out in outputs.values()
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_output_shapes(arch):
    feats = batch(5)
    for dropout in (0.0, 0.2):
        model = build(arch, dropout=dropout).train()
        out = model(feats)
        assert list(out) == list(HEADS)
        assert {t: tuple(y.shape) for t, y in out.items()} == {t: (5, d) for t, d in HEADS.items()}
    assert set(model.trunk.out_dims) == set(HEADS)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_parameter_gets_a_gradient(arch):
    model = build(arch)
    total_loss(model(batch(64))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_safetensors_round_trip(arch, tmp_path):
    model = build(arch).eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = build(arch, seed=123).eval()
    fresh.load_state_dict(load_file(str(path)))
    feats = batch()
    expected, got = model(feats), fresh(feats)
    for t in HEADS:
        torch.testing.assert_close(got[t], expected[t], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_deterministic_under_seed(arch):
    feats = batch()
    first, second = build(arch, seed=7)(feats), build(arch, seed=7)(feats)
    for t in HEADS:
        torch.testing.assert_close(first[t], second[t], rtol=0, atol=0)
    other = build(arch, seed=8)(feats)
    assert not all(torch.equal(first[t], other[t]) for t in HEADS)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_on_a_tiny_problem(arch):
    torch.manual_seed(0)
    n = 256
    feats = batch(n, seed=3)
    cat, num = feats["categorical"], feats["numeric"]
    logit = 2.0 * num[:, 0] - 1.5 * (cat[:, 0] == 1).float() + 0.5
    click = (logit + 0.3 * torch.randn(n) > 0).float().unsqueeze(1)
    value = (num[:, 1] * num[:, 2] + cat[:, 1].float() / 2 + 0.1 * torch.randn(n)).unsqueeze(1)
    model = build(arch, heads={"click": 1, "value": 1})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        out = model(feats)
        return F.binary_cross_entropy_with_logits(out["click"], click) + F.mse_loss(
            out["value"], value
        )

    with torch.no_grad():
        before = loss().item()
    for _ in range(50):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_then_task_outputs_equals_forward(arch):
    model = build(arch).eval()
    feats = batch()
    x = model.encoder(feats)
    split = model.trunk.task_outputs(x, model.trunk.shared(x))
    whole = model.trunk(x)
    assert list(split) == list(whole) == list(HEADS)
    for t in HEADS:
        torch.testing.assert_close(split[t], whole[t], rtol=0, atol=0)
        assert split[t].shape == (len(feats["numeric"]), model.trunk.out_dims[t])
    outputs, _ = model.forward_with_rep(feats)
    plain = model(feats)
    # the towers on the per-task dict give what the model's stacked fast path gives
    via_dict = model.towers(split)
    for t in HEADS:
        torch.testing.assert_close(outputs[t], plain[t], rtol=0, atol=0)
        torch.testing.assert_close(via_dict[t], plain[t], rtol=0, atol=0)


def test_a_subclass_that_overrides_task_outputs_keeps_them():
    from hydranet.models.trunks.mmoe import MMoE

    class Halved(MMoE):
        def task_outputs(self, x, rep):
            return {t: h / 2 for t, h in super().task_outputs(x, rep).items()}

    model = build("mmoe").eval()
    feats = batch()
    plain = model(feats)
    halved = Halved(model.trunk.input_dim, model.trunk.tasks)
    halved.load_state_dict(model.trunk.state_dict())
    model.trunk = halved
    x = model.encoder(feats)
    want = model.towers(
        {t: h / 2 for t, h in MMoE.task_outputs(halved, x, halved.shared(x)).items()}
    )
    got = model(feats)
    for t in HEADS:
        torch.testing.assert_close(got[t], want[t], rtol=0, atol=0)
        assert not torch.equal(got[t], plain[t])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dtype_and_device_moves(arch):
    model = build(arch).eval()
    feats = batch()
    expected = model(feats)
    moved = copy.deepcopy(model).to("cpu").to(torch.float64)
    got = moved({"categorical": feats["categorical"], "numeric": feats["numeric"].double()})
    for t in HEADS:
        assert got[t].dtype == torch.float64
        torch.testing.assert_close(got[t].float(), expected[t], rtol=1e-4, atol=1e-5)
    total_loss(got).backward()  # still differentiable after the move


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_parameters_are_exactly_those_before_rep(arch):
    model = build(arch)
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert not shared & task
    assert shared | task == {id(p) for p in model.parameters()}
    counts = model.parameter_summary()
    assert set(counts) == {"encoder", "trunk", "towers"}
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())

    _, rep = model.forward_with_rep(batch(64))
    rep.backward(torch.randn_like(rep))
    reached = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    names = {id(p): n for n, p in model.named_parameters()}
    assert reached == shared, sorted(names[i] for i in reached ^ shared)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rep_gradient_protocol_reproduces_backward(arch):
    """The protocol in ``forward_with_rep``'s docstring, with the plain sum as combiner."""
    feats = batch(32)
    model = build(arch)
    total_loss(model(feats)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    outputs, rep = model.forward_with_rep(feats)
    g = torch.Generator().manual_seed(2)
    losses = [F.mse_loss(y, torch.randn(y.shape, generator=g)) for y in outputs.values()]
    grads = [torch.autograd.grad(loss, rep, retain_graph=True)[0] for loss in losses]
    torch.autograd.backward(sum(losses), inputs=list(model.task_parameters()), retain_graph=True)
    rep.backward(sum(grads), inputs=list(model.shared_parameters()))
    for name, p in model.named_parameters():
        if arch in GATES_READ_INPUT and name.startswith("encoder."):
            continue
        torch.testing.assert_close(p.grad, expected[name], msg=name)


# ------------------------------------------------------------- user trunks


class TinyTrunk(Trunk):
    """A user's trunk, named by import path: a shared Linear, then one Linear per task."""

    def __init__(self, input_dim, tasks, *, activation="relu", dropout=0.0, width: int = 6):
        super().__init__(input_dim, tasks)
        self.bottom = nn.Linear(input_dim, width)
        self.per_task = nn.ModuleDict({t: nn.Linear(width, width + i) for i, t in enumerate(tasks)})
        self.out_dims = {t: width + i for i, t in enumerate(tasks)}

    def shared(self, x):
        return torch.relu(self.bottom(x))

    def task_outputs(self, x, rep):
        return {t: layer(rep) for t, layer in self.per_task.items()}

    def shared_parameters(self):
        return self.bottom.parameters()


def test_user_trunk_by_import_path():
    path = f"{__name__}:TinyTrunk"
    model = build(path, params={"width": 5})
    assert isinstance(model.trunk, TinyTrunk)
    assert model.trunk.out_dims == {"click": 5, "value": 6, "kind": 7}
    assert model.towers.per_task is not None  # unequal widths: per-task towers
    out = model(batch(4))
    assert {t: tuple(y.shape) for t, y in out.items()} == {t: (4, d) for t, d in HEADS.items()}
    total_loss(out).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert path not in TRUNKS.names()  # import paths stay out of the contract list


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UserError, match="mmoe"):
        build("no_such_trunk")


@pytest.mark.parametrize(
    ("arch", "params", "key"),
    [
        ("mmoe", {"num_experts": 0}, "num_experts"),
        ("mmoe", {"expert_hidden": []}, "expert_hidden"),
        ("cgc", {"num_shared_experts": -1}, "num_shared_experts"),
        ("ple", {"num_levels": 0}, "num_levels"),
        ("cross_stitch", {"hidden": []}, "hidden"),
    ],
)
def test_bad_hyper_parameters_name_their_key(arch, params, key):
    with pytest.raises(UserError, match=f"model.params.{key}"):
        build(arch, params=params)


def test_numeric_only_single_task_still_has_a_rep_gradient():
    torch.manual_seed(0)
    groups = {"numeric": {"kind": "numeric", "width": 4}}
    model = MultiTaskModel(groups, {"a": 1, "b": 1}, ModelSpec(architecture="single_task"))
    outputs, rep = model.forward_with_rep({"numeric": torch.randn(3, 4)})
    (grad,) = torch.autograd.grad(outputs["a"].sum(), rep)
    assert grad.shape == rep.shape == (3, 4)


@pytest.mark.parametrize(
    "arch, spec_scale, scale",
    [
        ("mmoe", None, 0.1),  # gated trunks start with small heads
        ("omoe", None, 0.1),
        ("cgc", None, 0.1),
        ("ple", None, 0.1),
        ("shared_bottom", None, 1.0),  # the others with PyTorch's
        ("cross_stitch", None, 1.0),
        ("single_task", None, 1.0),
        ("shared_bottom", 0.1, 0.1),  # the spec overrides the trunk's default
        ("mmoe", 0.5, 0.5),
    ],
)
def test_initialisation_small_embeddings_and_scaled_output_layers(arch, spec_scale, scale):
    # the same seed gives the same parameters but for the embedding's spread and the
    # output layers' scale; scale 0 starts every prediction at its output bias
    ref = build(arch, embedding_init_std=1.0, head_init_scale=1.0)
    small = build(arch, head_init_scale=spec_scale)
    assert torch.allclose(
        small.encoder.encoders.categorical.embedding.weight * 20,
        ref.encoder.encoders.categorical.embedding.weight,
    )
    outputs = {id(p) for layer in small.towers.output_layers() for p in [layer.weight]}
    ref_params = dict(ref.named_parameters())
    for name, p in small.named_parameters():
        if name == "encoder.encoders.categorical.embedding.weight":
            continue
        want = ref_params[name] * scale if id(p) in outputs else ref_params[name]
        assert torch.allclose(p, want), name
    assert len(outputs) >= 1
    zero = build(arch, head_init_scale=0.0)
    feats = batch()
    with torch.no_grad():
        out = zero(feats)
    for t in HEADS:  # every row the same: the output bias, whatever the input
        assert torch.equal(out[t], out[t][:1].expand_as(out[t])), t
        assert out[t].abs().sum() > 0
