"""The tabm trunk: TabM's k members against a per-member loop written out by hand, the
package's initialisation of the adapters, training, and ONNX export with parity.

The shapes, gradients, round trips and the shared/task split are the trunk contract tests'
(tests/test_trunks.py), which cover every registered trunk, tabm included.
"""

from __future__ import annotations

import pytest
import torch

import hydranet
from hydranet.errors import UserError
from hydranet.models.model import MultiTaskModel
from hydranet.models.trunks import TRUNKS
from hydranet.run import Run
from hydranet.spec import ModelSpec

GROUPS = {
    "categorical": {"kind": "categorical", "cardinalities": [3, 5, 4]},
    "numeric": {"kind": "numeric", "width": 3},
}
HEADS = {"click": 1, "kind": 3}
K, D = 4, 8


def build(seed: int = 0, dropout: float = 0.0, **params) -> MultiTaskModel:
    torch.manual_seed(seed)
    params = {"k": K, "d_block": D, "n_blocks": 2, **params}
    spec = ModelSpec(architecture="tabm", embedding_dim=3, tower=[], dropout=dropout, params=params)
    return MultiTaskModel(GROUPS, HEADS, spec)


def batch(n: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in (3, 5, 4)], dim=1)
    return {"categorical": cat, "numeric": torch.randn(n, 3, generator=g)}


def members_by_hand(model: MultiTaskModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Each member's backbone output, one member at a time, from the layers' parameters:
    ``relu((h * r_i) @ W.T * s_i + b_i)`` per layer (tabm), or ``x * a_i`` then shared
    ``relu(h @ W.T + b)`` layers (tabm-mini)."""
    backbone = model.trunk.backbone
    out = []
    for i in range(model.trunk.k):
        h = x
        if hasattr(backbone, "affine"):  # tabm-mini
            h = h * backbone.affine.weight[i]
        for block in backbone.blocks:
            lin = block[0]
            if hasattr(lin, "r"):
                h = (h * lin.r[i]) @ lin.weight.T * lin.s[i] + lin.bias[i]
            else:
                h = h @ lin.weight.T + lin.bias
            h = torch.relu(h)
        out.append(h)
    return out


@pytest.mark.parametrize("arch_type", ["tabm", "tabm-mini"])
def test_batched_forward_equals_the_per_member_loop(arch_type):
    """One batched computation is k members, and each task's output is the mean of k
    per-member linear heads' logits (the tower's output layer, seen as a [k, d, out] stack)."""
    model = build(arch_type=arch_type).eval()
    feats = batch()
    x = model.encoder(feats)
    with torch.no_grad():
        rep = model.trunk.shared(x)
        out = model(feats)
        members = members_by_hand(model, x)
    assert rep.shape == (16, K, D)
    assert model.trunk.out_dims == {t: K * D for t in HEADS}
    for i, h in enumerate(members):
        torch.testing.assert_close(rep[:, i], h, rtol=1e-5, atol=1e-6)
    for t in model.tasks:  # tower = []: the towers' output layers are the heads
        final = model.towers.finals[t]  # ragged widths (1 and 3): one nn.Linear per task
        heads = final.weight.T.reshape(K, D, HEADS[t]) * K**0.5  # member i's head: heads[i]
        logits = torch.stack([members[i] @ heads[i] + final.bias for i in range(K)])
        assert out[t].shape == (16, HEADS[t])
        torch.testing.assert_close(out[t], logits.mean(0), rtol=1e-5, atol=1e-5)


def test_adapters_start_as_the_package_starts_them_and_members_differ():
    model = build(n_blocks=3)
    first, *rest = [block[0] for block in model.trunk.backbone.blocks]
    # tabm init: random signs for the first layer's r, ones for every other r and s; all k
    # biases of a layer start equal (one shared bias plus k zero offsets)
    assert set(first.r.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(first.s, torch.ones_like(first.s))
    for lin in rest:
        assert torch.equal(lin.r, torch.ones_like(lin.r))
        assert torch.equal(lin.s, torch.ones_like(lin.s))
    for lin in [first, *rest]:
        assert torch.equal(lin.bias, lin.bias[:1].expand_as(lin.bias))
    with torch.no_grad():
        rep = model.trunk.shared(model.encoder(batch()))
    for i in range(1, K):
        assert not torch.allclose(rep[:, 0], rep[:, i]), f"member {i} starts as member 0"

    normal = build(scaling_init="normal").trunk.backbone.blocks[0][0].r
    assert not set(normal.unique().tolist()) <= {-1.0, 1.0}
    mini = build(arch_type="tabm-mini").trunk.backbone.affine.weight
    assert mini.shape == (K, build().trunk.input_dim)
    assert set(mini.unique().tolist()) == {-1.0, 1.0}


def test_dropout_masks_each_member_on_its_own():
    model = build(dropout=0.5).train()
    with torch.no_grad():
        rep = model.trunk.shared(model.encoder(batch()))
    zero = rep == 0
    # a unit dropped for one member is not dropped for all of them
    assert (zero.any(1) & ~zero.all(1)).any()


def test_defaults_are_the_papers():
    trunk = TRUNKS.get("tabm")(10, ["a"])
    assert trunk.k == 32 and trunk.d_block == 512 and len(trunk.backbone.blocks) == 3
    assert trunk.out_dims == {"a": 32 * 512}


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"k": 0}, "k"),
        ({"d_block": -1}, "d_block"),
        ({"n_blocks": 0}, "n_blocks"),
        ({"arch_type": "tabm-packed"}, "arch_type"),
        ({"scaling_init": "ones"}, "scaling_init"),
        ({"members": 4}, "members"),
    ],
)
def test_bad_params_name_their_key(tiny, params, key):
    inline = ", ".join(f"{k} = {v!r}" for k, v in params.items()).replace("'", '"')
    spec = tiny("tabm").read_text().replace("tower = [8]", f"tower = []\nparams = {{ {inline} }}")
    path = tiny.dir / "bad.toml"
    path.write_text(spec)
    with pytest.raises(UserError, match=f"model.params.{key}"):
        hydranet.Spec.load(str(path))


def _tabm_spec(tiny, epochs: int):
    text = tiny("tabm", epochs=epochs).read_text()
    text = text.replace(
        "tower = [8]",
        'tower = []\nparams = { k = 4, d_block = 16, n_blocks = 2, arch_type = "tabm" }',
    )
    path = tiny.dir / "tabm.toml"
    path.write_text(text)
    return hydranet.Spec.load(str(path))


def test_training_improves_on_the_initial_model_and_exports_to_onnx(tiny, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from hydranet.models.build import build_model
    from hydranet.serve.export import export_onnx

    run = hydranet.train(_tabm_spec(tiny, epochs=2), tmp_path / "run", progress=False)
    torch.manual_seed(0)
    untrained = build_model(run.spec, run.preprocessor, run.tasks, None).eval()
    before = Run(run.path, run.spec, run.preprocessor, run.tasks, untrained, run.device)
    start, end = before.evaluate("validation"), run.evaluate("validation")
    assert end["click"]["logloss"] < start["click"]["logloss"], (start, end)
    assert end["kind"]["logloss"] < start["kind"]["logloss"], (start, end)
    assert end["value"]["rmse"] < start["value"]["rmse"], (start, end)

    # export_onnx writes the graph only when ONNX Runtime gives PyTorch's predictions on
    # the test split (its parity check); the graph was traced on two rows
    report = export_onnx(run.path, tmp_path / "model.onnx")
    assert report.rows == 200 and report.max_diff <= 1e-5, report.summary()
    assert (tmp_path / "model.onnx").is_file()
