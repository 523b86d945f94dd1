import json

import pytest

import hydranet
from hydranet.cli import main
from hydranet.errors import UserError
from hydranet.evaluate.delta import delta_m


def test_delta_m_formula_signs_by_direction():
    model = {"a": {"auc": 0.9, "logloss": 0.2}, "b": {"rmse": 1.0}}
    base = {"a": {"auc": 0.8, "logloss": 0.25}, "b": {"rmse": 2.0}}
    # +12.5% auc, logloss 20% lower (better), rmse 50% lower (better)
    assert delta_m(model, base) == pytest.approx(100 * (0.125 + 0.2 + 0.5) / 3)
    assert delta_m(base, base) == 0.0


def test_delta_m_needs_shared_tasks():
    with pytest.raises(UserError, match="baseline has no task 'a'"):
        delta_m({"a": {"auc": 0.9}}, {"b": {"auc": 0.9}})


def test_evaluate_with_baseline_prints_delta(tiny, tmp_path, capsys):
    hydranet.train(tiny(arch="single_task", epochs=1), tmp_path / "single", progress=False)
    hydranet.train(tiny(arch="mmoe", epochs=1, name="m.toml"), tmp_path / "mmoe", progress=False)
    capsys.readouterr()
    assert (
        main(["evaluate", str(tmp_path / "mmoe"), "--baseline", str(tmp_path / "single"), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    m = hydranet.Run.load(tmp_path / "mmoe").evaluate("test")
    b = hydranet.Run.load(tmp_path / "single").evaluate("test")
    assert out["delta_m_pct"] == pytest.approx(delta_m(m, b))
    assert main(["evaluate", str(tmp_path / "mmoe"), "--baseline", str(tmp_path / "single")]) == 0
    assert "Δm%" in capsys.readouterr().out
