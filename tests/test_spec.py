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
    assert spec.train.batch_size == "auto" and spec.train.epochs == "auto"
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
    with pytest.raises(SpecError, match="bad.toml line 1, column 6: cannot parse"):
        Spec.load(p)


def test_user_class_by_import_path():
    spec = Spec.from_dict(
        _with(model__architecture="hydranet.models.trunks.shared_bottom:SharedBottom")
    )
    assert spec.model.architecture.endswith(":SharedBottom")


def test_round_trip_through_dict():
    spec = Spec.from_dict(BASE)
    assert Spec.from_dict(spec.to_dict()) == spec


# ------------------------------------------------------- parameter values, declared as data


def _problems(raw) -> str:
    with pytest.raises(SpecError) as e:
        Spec.from_dict(raw)
    return str(e.value)


def test_parameter_values_are_checked_at_load_all_at_once():
    raw = _with(
        model__params={"num_experts": "8", "expert_hidden": [16, 0]},
        balance__method="dwa",
        balance__params={"temperature": 0, "temp": 1},
    )
    msg = _problems(raw)
    assert "balance.params.temperature: must be greater than 0 (got 0)" in msg
    assert "balance.params.temp: unknown parameter of 'dwa'; allowed: temperature" in msg
    assert "model.params.num_experts: must be a valid integer (got '8')" in msg  # no coercion
    assert "model.params.expert_hidden[1]: must be greater than 0 (got 0)" in msg


def test_parameters_valid_alone_are_checked_together():
    msg = _problems(
        _with(
            model__architecture="cgc",
            model__params={"num_shared_experts": 0, "num_task_experts": 0},
        )
    )
    assert "model.params.num_task_experts" in msg
    # one of the two may be 0 (the other's default keeps a gate something to mix)
    Spec.from_dict(_with(model__architecture="ple", model__params={"num_shared_experts": 0}))


def test_bundled_dataset_name_and_params_are_checked():
    msg = _problems(
        _with(
            data={
                "dataset": "synthetic",
                "params": {"dim": 1, "correlation": 2, "n_rows": 2.5, "rows": 9},
            }
        )
    )
    assert "data.params.rows: unknown parameter of dataset 'synthetic'" in msg
    assert "data.params.dim: must be greater than or equal to 2 (got 1)" in msg
    assert "data.params.correlation: must be less than or equal to 1 (got 2)" in msg
    assert "data.params.n_rows: must be a valid integer (got 2.5)" in msg
    assert "data.dataset: unknown dataset 'nope'" in _problems(_with(data__dataset="nope"))
    Spec.from_dict(_with(data={"dataset": "synthetic", "params": {"dim": 4, "correlation": -1}}))


def test_a_class_by_import_path_must_be_of_the_right_kind():
    msg = _problems(
        _with(
            model__architecture="hydranet.errors:UserError",
            balance__method="hydranet.models.trunks.mmoe:MMoE",
        )
    )
    assert (
        "model.architecture: 'hydranet.errors:UserError' is not a subclass of hydranet.Trunk" in msg
    )
    assert (
        "balance.method: 'hydranet.models.trunks.mmoe:MMoE' is not a subclass of hydranet.Balancer"
        in msg
    )


_TRUNK_BUILT = {"self", "input_dim", "tasks", "activation", "dropout"}


def _trunk_names():
    from hydranet.models.trunks import TRUNKS

    return TRUNKS.names()


@pytest.mark.parametrize("name", _trunk_names())
def test_every_trunk_declares_its_parameters(name):
    """Generated from TRUNKS: every constructor parameter a Spec may set has constraints, and
    the defaults meet them (balancers: tests/test_balance_contract.py)."""
    import inspect

    from hydranet.models.trunks import TRUNKS
    from hydranet.params import check_values

    cls = TRUNKS.get(name)
    settable = {n: p for n, p in inspect.signature(cls).parameters.items() if n not in _TRUNK_BUILT}
    assert set(cls.param_constraints) == set(settable)
    defaults = {n: p.default for n, p in settable.items()}
    assert check_values(cls.param_constraints, defaults, "model.params") == []
    assert cls.check_params(defaults) == []


def test_every_bundled_dataset_declares_its_parameters():
    from hydranet.data.datasets import DATASETS
    from hydranet.params import check_values

    for name in DATASETS.names():
        entry = DATASETS.get(name)
        assert set(entry.constraints) == set(entry.params), name
        assert check_values(entry.constraints, entry.params, "data.params") == [], name
