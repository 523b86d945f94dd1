"""Contract tests generated from ``ENCODERS.names()`` and ``FUSIONS.names()``.

A new encoder registered in :mod:`hydranet.models.encoders` is picked up here without
anyone writing a test: from its ``example_group()`` (and its ``fit_state`` first when it
``needs_fit``) it must give a finite ``[B, out_dim]``, a gradient to every parameter, the
same output under the same seed, identical output after a safetensors round trip into a
fresh instance, a float64 move, and an ONNX graph (inside a small MultiTaskModel) that
onnxruntime runs to PyTorch's numbers. Its constructor must take what hydranet builds it
with (``group, model_spec, state``) and default every other parameter, so that a spec
naming it with no ``params`` works.
"""

from __future__ import annotations

import inspect
import io
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hydranet.features import FEATURES
from hydranet.models.encoders import ENCODERS, FUSIONS, InputEncoder
from hydranet.models.encoders.input import fit_encoder_states
from hydranet.models.model import MultiTaskModel
from hydranet.spec import EncoderSpec, ModelSpec

# a pretrained encoder needs a weights file: it takes part when its example_params() write one
NAMES = [
    n
    for n in ENCODERS.names()
    if not ENCODERS.get(n).pretrained or hasattr(ENCODERS.get(n), "example_params")
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def example_params(cls) -> dict:
    """Params an encoder cannot do without (a pretrained one's weights file), else none."""
    return cls.example_params() if hasattr(cls, "example_params") else {}


def example(name: str, seed: int = 0):
    """The encoder class, its example group and rows, and its fitted state (or None)."""
    cls = ENCODERS.get(name)
    torch.manual_seed(seed)
    group, x = cls.example_group()
    params = cls.with_defaults(example_params(cls))
    state = cls.fit_state(group, x, params, None) if cls.needs_fit else None
    return cls, group, x, state


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    cls, group, x, state = example(name)
    torch.manual_seed(seed)
    enc = cls(group, None, state=state, **example_params(cls))
    if hasattr(enc, "reset_parameters"):
        enc.reset_parameters()
    return enc, x


@pytest.mark.parametrize("name", NAMES)
def test_constructor_takes_what_hydranet_passes(name):
    cls = ENCODERS.get(name)
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params[:3]] == ["group", "model_spec", "state"]
    no_default = [p.name for p in params[3:] if p.default is inspect.Parameter.empty]
    assert not no_default, f"{name}: parameters {no_default} need defaults (a spec may give none)"
    stray = set(cls.param_constraints) - {p.name for p in params[3:]}
    assert not stray, f"{name}: constraints for parameters it does not take: {stray}"
    assert all(FEATURES.get(k) for k in cls.kinds)  # only kinds that exist
    group, _ = cls.example_group()
    assert not cls.kinds or group["kind"] in cls.kinds


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_finite(name):
    enc, x = build(name)
    out = enc(x)
    assert isinstance(enc.out_dim, int) and enc.out_dim > 0
    assert out.shape == (x.shape[0], enc.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # rows are independent: one row alone gives what it gave in the batch
    torch.testing.assert_close(enc.eval()(x[3:4]), enc(x)[3:4])


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    enc, x = build(name)
    if x.is_floating_point():
        x.requires_grad_()  # so that a parameter-free encoder (identity) has a graph too
    out = enc(x)
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} got a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name):
    a, x = build(name, seed=3)
    b, _ = build(name, seed=3)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # a pretrained encoder's weights are its file's, whatever the seed
    if any(True for _ in a.parameters()) and not a.pretrained:
        c, _ = build(name, seed=4)
        assert not all(
            torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True)
        ), f"{name}: parameters do not depend on the seed"


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip(name, tmp_path):
    a, x = build(name, seed=0)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    b, _ = build(name, seed=1)  # the same state (bins), other weights
    b.load_state_dict(load_file(str(path)))
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_float64_move(name):
    enc, x = build(name)
    ref = enc(x)
    enc = enc.to(torch.float64)
    x64 = x.double() if x.is_floating_point() else x
    out = enc(x64)
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in enc.parameters())
    torch.testing.assert_close(out.float(), ref, rtol=1e-5, atol=1e-5)


class _Positional(nn.Module):
    """The model with the group tensors as positional inputs (as the ONNX export takes them)."""

    def __init__(self, model: MultiTaskModel, groups: list[str]):
        super().__init__()
        self.model = model
        self.groups = groups

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(dict(zip(self.groups, features, strict=True)))
        return tuple(out[t] for t in self.model.tasks)


def small_model(name: str) -> tuple[MultiTaskModel, torch.Tensor]:
    cls, group, x, _ = example(name)
    spec = ModelSpec(
        architecture="shared_bottom",
        tower=[4],
        encoders={"g": EncoderSpec(name=name, params=example_params(cls))},
    )
    groups = {"g": group}
    states = fit_encoder_states(spec, groups, {"g": x})
    torch.manual_seed(0)
    return MultiTaskModel(groups, {"y": 1, "z": 3}, spec, states).eval(), x


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, x = small_model(name)
    wrapper = _Positional(model, ["g"]).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning, the TorchScript exporter's deprecation
        torch.onnx.export(
            wrapper,
            (x[:2],),
            buf,
            input_names=["g"],
            output_names=["y", "z"],
            dynamic_axes={"g": {0: "batch"}, "y": {0: "batch"}, "z": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"g": x.numpy()})  # the whole batch: the batch axis is dynamic
    with torch.no_grad():
        want = wrapper(x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- fusions
FUSION_NAMES = FUSIONS.names()
DIMS = {"a": 3, "b": 5}
TASKS = ["t1", "t2"]


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_fusion_shape_backward_and_round_trip(name):
    torch.manual_seed(0)
    fusion = FUSIONS.get(name)(dict(DIMS), TASKS)
    assert isinstance(fusion.out_dim, int) and fusion.out_dim > 0
    parts = [torch.randn(7, d, requires_grad=True) for d in DIMS.values()]
    out = fusion(parts)
    # one trunk input, or one per task in task order
    shape = (len(TASKS), 7, fusion.out_dim) if fusion.per_task else (7, fusion.out_dim)
    assert out.shape == shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parts)
    torch.manual_seed(1)
    other = FUSIONS.get(name)(dict(DIMS), TASKS)
    other.load_state_dict(fusion.state_dict())
    torch.testing.assert_close(other(parts), fusion(parts), rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSION_NAMES)
def test_fusion_in_the_input_encoder(name):
    _, num, xn, _ = example("identity")
    _, cat, xc, _ = example("embedding")
    spec = ModelSpec(fusion=name, embedding_dim=2)
    enc = InputEncoder({"cat": cat, "num": num}, spec, tasks=TASKS)
    out = enc({"cat": xc, "num": xn})
    shape = (xn.shape[0], enc.out_dim)
    assert out.shape == ((len(TASKS), *shape) if enc.per_task else shape)
    assert enc.out_dim == enc.fusion.out_dim


def test_tree_bins_on_a_sample_use_the_sampled_rows_labels(monkeypatch):
    """Above the row cap the bins come from a sample of rows; target-aware (tree) bins must
    see those rows' labels, not the first ones."""
    pytest.importorskip("sklearn", reason="tree bins need scikit-learn (the bench extra)")
    from hydranet.models.encoders import numeric

    monkeypatch.setattr(numeric, "_MAX_BIN_ROWS", 300)
    cls = ENCODERS.get("piecewise_linear")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=gen)
    y = (x[:, 0] > 0.3).float()  # a step the trees find only with each row's own label
    params = cls.with_defaults({"bins": "tree", "n_bins": 2})
    state = cls.fit_state({"kind": "numeric", "width": 2}, x, params, (y, False))
    assert len(state["bins"]) == 2
    (inner,) = state["bins"][0][1:-1]  # one split on the first column, at the step
    assert abs(inner - 0.3) < 0.1, state["bins"][0]


def test_piecewise_linear_says_nothing_of_a_column_with_one_bin():
    # capital gains: 0 in most rows, so its quantiles collapse into one bin; rtdl's multi-line
    # UserWarning (naming a position, asking nothing of the user) is not passed on
    import warnings

    cls = ENCODERS.get("piecewise_linear")
    x = torch.zeros(1000, 2)
    x[:3, 0] = torch.tensor([5.0, 7.0, 9.0])
    x[:, 1] = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = cls.fit_state({"kind": "numeric", "width": 2}, x, cls.with_defaults({}), None)
    assert len(state["bins"][0]) == 2 and len(state["bins"][1]) > 2
