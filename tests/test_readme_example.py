"""The README's "Extending hydranet" worked example runs as printed, so it cannot rot.

Its Python block is executed (registered under a unique name, so it clashes with nothing
else in the process), its TOML block is appended to a tiny spec, and that spec trains through
``hydranet.train``; the same file, without its registration line, is then used by import
path (``mypkg.encoders:Clipped``), as the README says it can be.
"""

from __future__ import annotations

import math
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch

import hydranet
from hydranet.errors import SpecError
from hydranet.models.encoders import ENCODERS
from hydranet.models.model import MultiTaskModel
from hydranet.spec import Spec

README = Path(__file__).resolve().parents[1] / "README.md"
REGISTER = '@ENCODERS.register("clipped")'
NAME_LINE = 'name = "clipped"'


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Extending hydranet\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Extending hydranet' section"
    return match.group(1)


def _block(lang: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", _section(), re.S | re.M)
    assert blocks, f"the 'Extending hydranet' section has no {lang} block"
    return blocks[0]


def _with(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the README example no longer has {old!r} once"
    return text.replace(old, new)


def register_example() -> str:
    """Runs the README's Python block, registering its encoder under a fresh name."""
    name = f"readme_clipped_{uuid.uuid4().hex[:8]}"
    code = _with(_block("python"), REGISTER, f'@ENCODERS.register("{name}")')
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    return name


def test_readme_encoder_trains(tiny, tmp_path):
    name = register_example()
    cls = ENCODERS.get(name)
    assert cls.__name__ == "Clipped"

    toml = _with(_block("toml"), NAME_LINE, f'name = "{name}"')
    spec_path = tiny(arch="shared_bottom", epochs=1, extra="\n" + toml)
    spec = Spec.load(spec_path)
    assert spec.model.encoders["numeric"].name == name
    run = hydranet.train(spec, tmp_path / "run", progress=False)

    enc = run.model.encoder.encoders["numeric"]
    assert type(enc) is cls
    params = spec.model.encoders["numeric"].params
    assert enc.limit == params["limit"] and enc.out_dim == params["dim"]
    metrics = run.evaluate("test")
    assert math.isfinite(metrics["click"]["auc"]) and metrics["click"]["auc"] > 0.6
    # the example's own example_group builds it, as the contract tests would
    group, x = cls.example_group()
    assert cls(group).forward(x).shape == (x.shape[0], 8)


def test_readme_encoder_by_import_path(tiny, tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    # no registration: the import path is enough
    (pkg / "encoders.py").write_text(_with(_block("python"), REGISTER + "\n", ""))
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg.encoders", raising=False)
    try:
        toml = _with(_block("toml"), NAME_LINE, 'name = "mypkg.encoders:Clipped"')
        spec = Spec.load(tiny(arch="shared_bottom", epochs=1, extra="\n" + toml))

        groups = {"numeric": {"kind": "numeric", "width": 3, "n_values": 3}}
        torch.manual_seed(0)
        model = MultiTaskModel(groups, {"click": 1}, spec.model)
        enc = model.encoder.encoders["numeric"]
        assert type(enc).__module__ == "mypkg.encoders" and type(enc).__name__ == "Clipped"
        assert enc.out_dim == 16
        out = model({"numeric": torch.randn(5, 3)})
        assert out["click"].shape == (5, 1)
    finally:
        for mod in ("mypkg.encoders", "mypkg"):
            sys.modules.pop(mod, None)


def test_readme_encoder_params_are_checked_at_load(tiny):
    name = register_example()
    toml = _with(_block("toml"), NAME_LINE, f'name = "{name}"')
    # a typo and a value its param_constraints refuse: both reported, each with its key path
    toml = _with(_with(toml, "limit = 2.5", "limt = 2.5"), "dim = 16", "dim = 0")
    with pytest.raises(SpecError) as e:
        Spec.load(tiny(extra="\n" + toml))
    assert "model.encoders.numeric.params.limt" in str(e.value)
    assert "model.encoders.numeric.params.dim" in str(e.value)
