import pytest

from hydranet import Spec, SpecError

BASE = {
    "data": {"train": "t.parquet", "numeric": ["a"]},
    "tasks": [{"name": "y", "kind": "binary"}],
}


def _with(**patch):
    import copy

    raw = copy.deepcopy(BASE)
    for path, value in patch.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def test_defaults_are_filled():
    spec = Spec.from_dict(BASE)
    assert spec.model.architecture == "mmoe"
    assert spec.train.batch_size == 1024
    assert spec.balance.method == "ew"
    assert spec.tasks[0].label_columns == ["y"]


def test_all_errors_are_reported_at_once_with_key_paths():
    raw = _with(train__batch_size=-3, train__optimiser="adam", model__architecture="nope")
    raw["tasks"][0]["kind"] = "ranking"
    with pytest.raises(SpecError) as e:
        Spec.from_dict(raw)
    msg = str(e.value)
    assert "train.batch_size" in msg
    assert "train.optimiser: unknown key" in msg and "optimizer" in msg  # allowed keys are listed


def test_registry_names_are_checked_after_types():
    raw = _with(model__architecture="nope", balance__method="nope")
    raw["tasks"][0]["kind"] = "ranking"
    with pytest.raises(SpecError) as e:
        Spec.from_dict(raw)
    msg = str(e.value)
    assert "tasks[0].kind" in msg and "binary" in msg
    assert "model.architecture" in msg and "mmoe" in msg
    assert "balance.method" in msg and "ew" in msg


def test_architecture_params_are_checked_against_the_constructor():
    with pytest.raises(
        SpecError,
        match=r"model\.params\.num_expert: unknown parameter of 'mmoe'; allowed: .*num_experts",
    ):
        Spec.from_dict(_with(model__params={"num_expert": 4}))


def test_duplicate_task_names_rejected():
    raw = _with()
    raw["tasks"].append({"name": "y", "kind": "regression"})
    with pytest.raises(SpecError, match="unique"):
        Spec.from_dict(raw)


def test_yaml_and_toml_load_the_same(tmp_path):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.toml").write_text(
        '[data]\ntrain = "t.parquet"\nnumeric = ["a"]\n[[tasks]]\nname = "y"\nkind = "binary"\n'
    )
    assert Spec.load(tmp_path / "s.yaml") == Spec.load(tmp_path / "s.toml")


def test_parse_error_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[data\n")
    with pytest.raises(SpecError, match="bad.toml: cannot parse"):
        Spec.load(p)


def test_user_class_by_import_path():
    spec = Spec.from_dict(
        _with(model__architecture="hydranet.models.trunks.shared_bottom:SharedBottom")
    )
    assert spec.model.architecture.endswith(":SharedBottom")


def test_round_trip_through_dict():
    spec = Spec.from_dict(BASE)
    assert Spec.from_dict(spec.to_dict()) == spec
