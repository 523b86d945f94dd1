"""The gated fusion: per-task softmax gates over the groups' vectors, with every trunk."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from hydranet import Spec, SpecError, UserError
from hydranet.balance import BALANCERS
from hydranet.balance.base import BalanceContext
from hydranet.models.encoders import FUSIONS
from hydranet.models.encoders.fusion import GatedFusion
from hydranet.models.model import MultiTaskModel
from hydranet.models.trunks import TRUNKS
from hydranet.spec import ModelSpec

CARDS = [3, 5, 4]
GROUPS = {
    "categorical": {"kind": "categorical", "cardinalities": CARDS},
    "numeric": {"kind": "numeric", "width": 3},
}
HEADS = {"click": 1, "value": 1, "kind": 3}
DIM = 5
SMALL_PARAMS = {"tabm": {"k": 4, "d_block": 32, "n_blocks": 2}}


def build(arch: str = "mmoe", groups=GROUPS, seed: int = 0, **spec) -> MultiTaskModel:
    torch.manual_seed(seed)
    spec.setdefault("params", SMALL_PARAMS.get(arch, {}))
    model_spec = ModelSpec(
        architecture=arch,
        embedding_dim=3,
        tower=[8],
        fusion="gated",
        fusion_params={"dim": DIM},
        **spec,
    )
    return MultiTaskModel(groups, HEADS, model_spec)


def batch(n: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    return {"categorical": cat, "numeric": torch.randn(n, 3, generator=g)}


def losses(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {t: F.mse_loss(y, torch.randn(y.shape, generator=g)) for t, y in outputs.items()}


@pytest.mark.parametrize("arch", TRUNKS.names())
def test_every_trunk_takes_the_gated_fusion(arch):
    model = build(arch)
    fusion = model.encoder.fusion
    assert isinstance(fusion, GatedFusion) and model.trunk.input_dim == 2 * DIM
    # the gates start at zero (each task: the mean of its groups); give them some weight, as
    # training does, so that every parameter is reached
    assert not fusion.gates.weight.any()
    with torch.no_grad():
        fusion.gates.weight.normal_()
    feats = batch(16)
    outputs = model(feats)
    assert {t: tuple(y.shape) for t, y in outputs.items()} == {
        "click": (16, 1),
        "value": (16, 1),
        "kind": (16, 3),
    }
    # each task's trunk output is computed from its own mix alone: changing another task's
    # gate leaves it as it was
    with torch.no_grad():
        before = model(feats)
        nudge = torch.randn(fusion.gates.weight.shape[1])
        fusion.gates.weight[0, :, 0].add_(nudge)  # task 0's gate on group 0
        after = model(feats)
        fusion.gates.weight[0, :, 0].sub_(nudge)
    assert not torch.equal(before["click"], after["click"])
    for t in ("value", "kind"):
        torch.testing.assert_close(before[t], after[t], rtol=0, atol=0)
    sum(losses(outputs).values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    # the gates are task parameters, the projections shared; rep reaches the shared ones and
    # the gates (each task's gate makes its trunk input)
    model.zero_grad(set_to_none=True)
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    gates = {id(p) for p in fusion.task_parameters()}  # the gates and their input norms
    assert {id(p) for p in fusion.gates.parameters()} <= gates
    assert gates <= task and not gates & shared
    assert {id(p) for p in fusion.projections.parameters()} <= shared
    assert shared | task == {id(p) for p in model.parameters()} and not shared & task
    _, rep = model.forward_with_rep(batch(64))
    rep.backward(torch.randn_like(rep))
    reached = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == shared | gates

    # a balancer on rep gradients and one on parameter gradients each run a step
    for name, rep_grad in (("pcgrad", True), ("mgda", False)):
        model.zero_grad(set_to_none=True)
        balancer = BALANCERS.get(name)(list(HEADS), rep_grad=rep_grad)
        outputs, rep = model.forward_with_rep(feats)
        ctx = BalanceContext(
            shared_params=list(model.shared_parameters()),
            task_params=list(model.task_parameters()),
            rep=rep,
            present=dict.fromkeys(HEADS, True),
        )
        balancer.backward(losses(outputs), ctx)
        assert all(torch.isfinite(p.grad).all() for p in fusion.gates.parameters()), name
        assert fusion.gates.weight.grad.abs().sum() > 0, name
        assert all(p.grad is not None for p in fusion.projections.parameters()), name


def test_gate_weights_and_modality_weights():
    model = build("shared_bottom")
    feats = batch(10)
    parts = model.encoder.parts(feats)
    w = model.encoder.fusion.gate_weights(parts)
    assert w.shape == (3, 10, 2)  # [T, B, G]
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 10))
    # each task's trunk input: its weights (times the number of groups) on the projected
    # groups, side by side
    mix = model.encoder(feats)
    proj = [p(v) for p, v in zip(model.encoder.fusion.projections, parts, strict=True)]
    want = torch.cat([2 * w[..., :1] * proj[0], 2 * w[..., 1:] * proj[1]], dim=-1)
    torch.testing.assert_close(mix, want)

    model.train()
    report = model.modality_weights(feats)
    assert model.training  # the report ran in eval mode and left the mode as it was
    assert list(report) == list(HEADS) and all(list(r) == list(GROUPS) for r in report.values())
    for t, row in zip(HEADS, w.mean(1), strict=True):
        assert report[t] == pytest.approx(dict(zip(GROUPS, row.tolist(), strict=True)))

    concat = MultiTaskModel(GROUPS, HEADS, ModelSpec())
    with pytest.raises(UserError, match="model.fusion.*gated"):
        concat.modality_weights(feats)


def test_a_single_group_has_a_constant_gate():
    model = build("mmoe", groups={"numeric": GROUPS["numeric"]})
    feats = {"numeric": batch(8)["numeric"]}
    w = model.encoder.fusion.gate_weights(model.encoder.parts(feats))
    assert torch.equal(w, torch.ones(3, 8, 1))
    assert model.modality_weights(feats) == {t: {"numeric": 1.0} for t in HEADS}
    assert model(feats)["kind"].shape == (8, 3)


def test_concat_ignores_the_tasks_and_gives_one_trunk_input():
    concat = FUSIONS.get("concat")({"a": 3, "b": 4}, ["t"])
    parts = [torch.randn(2, 3), torch.randn(2, 4)]
    assert not concat.per_task and torch.equal(concat(parts), torch.cat(parts, 1))
    model = MultiTaskModel(GROUPS, HEADS, ModelSpec(embedding_dim=3))
    assert model.towers.hidden.in_dim == model.trunk.out_dims["click"]


def test_concat_normalises_each_group_and_drops_whole_groups_in_training():
    torch.manual_seed(0)
    concat = FUSIONS.get("concat")({"a": 3, "b": 5}, ["t"], norm=True, modality_dropout=0.5)
    n = 4000
    # very different scales, as a frozen image backbone's features next to a sentence embedding
    parts = [100 * torch.randn(n, 3) + 50, 0.1 * torch.randn(n, 5)]
    concat.eval()
    out = concat(parts)
    assert out.shape == (n, 8)
    # each group on its own (LayerNorm starts as scale 1, shift 0), not the joined vector
    want = torch.cat([F.layer_norm(parts[0], (3,)), F.layer_norm(parts[1], (5,))], 1)
    torch.testing.assert_close(out, want)
    assert torch.equal(concat(parts), out)  # evaluation keeps every group, every time
    concat.train()
    dropped = concat(parts)
    for cols in (slice(0, 3), slice(3, 8)):
        block, kept = dropped[:, cols], out[:, cols]
        zero = (block == 0).all(1)
        # a row's group is dropped whole, or kept whole and scaled by 1 / (1 - p)
        torch.testing.assert_close(block[~zero], 2 * kept[~zero])
        assert 0.45 < zero.float().mean() < 0.55
    # the two groups are dropped independently
    both = ((dropped[:, :3] == 0).all(1) & (dropped[:, 3:] == 0).all(1)).float().mean()
    assert 0.2 < both < 0.3


def test_fusion_params_are_checked_with_their_key():
    base = {
        "data": {"train": "t.parquet", "numeric": ["a"]},
        "tasks": [{"name": "y", "kind": "binary"}],
    }
    ok = Spec.from_dict({**base, "model": {"fusion": "gated", "fusion_params": {"dim": 8}}})
    assert ok.model.fusion_params == {"dim": 8}
    for model, message in (
        ({"fusion": "gated", "fusion_params": {"dimm": 8}}, r"model\.fusion_params\.dimm: .*dim"),
        ({"fusion": "gated", "fusion_params": {"dim": 0}}, r"model\.fusion_params\.dim: "),
        ({"fusion": "concat", "fusion_params": {"dim": 8}}, r"model\.fusion_params\.dim: "),
        (
            {"fusion": "concat", "fusion_params": {"modality_dropout": 1.0}},
            r"model\.fusion_params\.modality_dropout: ",
        ),
        (
            {"fusion": "concat", "fusion_params": {"norm": "yes"}},
            r"model\.fusion_params\.norm: ",
        ),
        ({"fusion": "nope"}, r"model\.fusion: .*gated"),
    ):
        with pytest.raises(SpecError, match=message):
            Spec.from_dict({**base, "model": model})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_task_learns_to_weigh_its_own_group(seed):
    """Task 1's classes come from group A alone, task 2's from B alone, with the default MMoE
    and towers. A task's trunk input is its own mix, so its gate has to let its group through
    (measured over seeds 0-4 after 300 steps: 0.60-0.99 on the right group, and each task
    weighs its own group 0.49-0.97 more than the other task does)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(100 + seed)
    n, width = 1024, 4
    a, b = torch.randn(n, width, generator=g), torch.randn(n, width, generator=g)
    y1 = (a @ torch.randn(width, 3, generator=g)).argmax(1)
    y2 = (b @ torch.randn(width, 3, generator=g)).argmax(1)
    spec = ModelSpec(fusion="gated", fusion_params={"dim": 8})
    groups = {"A": {"kind": "numeric", "width": width}, "B": {"kind": "numeric", "width": width}}
    model = MultiTaskModel(groups, {"t1": 3, "t2": 3}, spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        i = torch.randint(0, n, (128,), generator=g)
        out = model({"A": a[i], "B": b[i]})
        loss = F.cross_entropy(out["t1"], y1[i]) + F.cross_entropy(out["t2"], y2[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = model.modality_weights({"A": a, "B": b})
    assert weights["t1"]["A"] > 0.55 and weights["t2"]["B"] > 0.55, weights
    assert weights["t1"]["A"] - weights["t2"]["A"] > 0.3, weights
    assert weights["t2"]["B"] - weights["t1"]["B"] > 0.3, weights


@pytest.mark.parametrize(
    ("fusion", "params", "toml"),
    [
        ("gated", {"dim": 4}, "{ dim = 4 }"),
        (
            "concat",
            {"norm": True, "modality_dropout": 0.3},
            "{ norm = true, modality_dropout = 0.3 }",
        ),
    ],
)
def test_a_fused_run_saves_loads_and_exports(tiny, tmp_path, capsys, fusion, params, toml):
    import hydranet
    from hydranet.cli import main
    from hydranet.run import Run

    path = tiny(arch="mmoe", epochs=1)
    text = path.read_text().replace(
        "tower = [8]\n", f'tower = [8]\nfusion = "{fusion}"\nfusion_params = {toml}\n'
    )
    path.write_text(text)
    run = hydranet.train(hydranet.Spec.load(str(path)), tmp_path / "run", progress=False)
    test = pq.read_table(tiny.paths["test"])
    loaded = Run.load(tmp_path / "run")
    assert isinstance(loaded.model.encoder.fusion, FUSIONS.get(fusion))
    assert loaded.spec.model.fusion_params == params
    ref = run.predict(test)
    assert loaded.predict(test).equals(ref)

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from hydranet.serve.predictor import Predictor

    onnx = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "run"), "--onnx", str(onnx)]) == 0
    diff = float(re.search(r"max abs diff (\S+)", capsys.readouterr().out).group(1))
    assert diff <= 1e-5
    onnx_pred = Predictor.load(tmp_path / "run", "onnxruntime", onnx=onnx).predict_table(test)
    for name in ref.column_names:
        got, want = onnx_pred.column(name).to_pylist(), ref.column(name).to_pylist()
        if isinstance(want[0], str):
            assert got == want, name
        else:
            np.testing.assert_allclose(np.array(got, float), np.array(want, float), atol=1e-5)
