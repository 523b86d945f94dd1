"""Contract tests generated from ``FEATURES.names()``: every feature kind, the same checks.

A new kind registered in :mod:`hydranet.features` is picked up here without anyone writing
a test. From the kind's ``example_table(n, seed)`` (a small table with a missing value, and
the group's params) it must: fit the same whether given the whole table or record batches
(``partial_fit`` per batch, then ``finish``); transform into one contiguous tensor of N rows
and ``len(names_out)`` columns (or, for a kind whose rows are not flat, the ``shape`` its
``info()`` declares), with no NaN from a missing value; give the same tensor after a
``to_dict`` → JSON → ``from_dict`` round trip; report every missing column and a column of a
type it cannot take, one line each; refuse to transform before it is fitted; describe itself
in JSON; and feed its default encoder through ``InputEncoder``, forward and backward.
"""

from __future__ import annotations

import inspect
import json
import math

import pyarrow as pa
import pytest
import torch
from torch import nn

from hydranet.features import FEATURES, FeatureGroup
from hydranet.models.encoders import ENCODERS, InputEncoder
from hydranet.models.encoders.input import fit_encoder_states
from hydranet.params import check_values
from hydranet.spec import ModelSpec

KINDS = FEATURES.names()
N = 50
# Column types some kind may not take; every kind must refuse at least one of them.
ODD_TYPES = [
    pa.string(),
    pa.list_(pa.int64()),
    pa.binary(),
    pa.struct([("x", pa.int64())]),
    pa.timestamp("s"),
]


def example(kind: str, n: int = N, seed: int = 0) -> tuple[type[FeatureGroup], pa.Table, dict]:
    cls = FEATURES.get(kind)
    table, params = cls.example_table(n, seed)
    return cls, table, params


def new_group(kind: str, table: pa.Table, params: dict) -> FeatureGroup:
    return FEATURES.get(kind)("g", table.column_names, **params)


def fitted(kind: str, n: int = N) -> tuple[FeatureGroup, pa.Table]:
    _, table, params = example(kind, n)
    return new_group(kind, table, params).fit(table), table


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, a NaN equal to a NaN in the same place."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


def assert_same_state(a, b, where: str = "state") -> None:
    """Equal JSON-able states; floats to 1e-12 (streamed moments sum in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), f"{where}: {a} != {b}"
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_registered_under_its_kind_with_a_default_encoder(kind):
    cls = FEATURES.get(kind)
    assert cls.kind == kind  # from_dict finds the class again by this name
    takes = set(inspect.signature(cls).parameters) - {"name", "columns"}
    stray = set(cls.param_constraints) - takes
    assert not stray, f"{kind}: constraints for parameters it does not take: {stray}"
    _, table, params = example(kind)
    assert check_values(cls.param_constraints, params, "params") == []
    assert cls.check_params(params) == []
    saved = new_group(kind, table, params).params()  # what to_dict keeps for from_dict
    assert {k: saved.get(k) for k in params} == params
    encoder = ENCODERS.get(cls.default_encoder)
    assert not encoder.kinds or kind in encoder.kinds
    assert table.num_rows == N
    # the same seed, the same table; another seed, other rows
    assert same_rows(example(kind)[1], table)
    assert not same_rows(example(kind, seed=1)[1], table)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_rows", [7, 16])
def test_fit_equals_partial_fit_over_record_batches(kind, batch_rows):
    _, table, params = example(kind)
    whole = new_group(kind, table, params).fit(table)
    streamed = new_group(kind, table, params)
    batches = table.to_batches(max_chunksize=batch_rows)
    assert len(batches) > 2
    for batch in batches:
        assert isinstance(batch, pa.RecordBatch)
        streamed.partial_fit(batch)
    streamed.finish()
    assert_same_state(streamed.fitted_state(), whole.fitted_state())
    torch.testing.assert_close(streamed.transform(table), whole.transform(table))
    assert streamed.info() == whole.info()
    # fitting again starts afresh: a second fit on half the rows is the fit of those rows
    half = table.slice(0, N // 2)
    assert_same_state(
        whole.fit(half).fitted_state(), new_group(kind, table, params).fit(half).fitted_state()
    )


@pytest.mark.parametrize("kind", KINDS)
def test_transform_is_one_contiguous_tensor_per_group(kind):
    group, table = fitted(kind)
    x = group.transform(table)
    assert isinstance(x, torch.Tensor) and x.is_contiguous()
    info = group.info()
    assert x.shape[0] == N
    if "shape" in info:
        assert list(x.shape[1:]) == list(info["shape"])
    else:
        assert x.shape == (N, len(group.names_out))
    if x.is_floating_point():
        assert torch.isfinite(x).all()  # the example's missing value is imputed, not NaN
    # a record batch, a slice and a zero-row table transform like the table's rows
    batch = table.to_batches(max_chunksize=N)[0]
    torch.testing.assert_close(group.transform(batch), x)
    torch.testing.assert_close(group.transform(table.slice(10, 5)), x[10:15])
    assert group.transform(table.slice(0, 0)).shape == (0, *x.shape[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip_transforms_identically(kind):
    group, table = fitted(kind)
    state = json.loads(json.dumps(group.to_dict()))
    back = FeatureGroup.from_dict(state)
    assert type(back) is type(group) and back.columns == group.columns
    assert back.is_fitted and back.names_out == group.names_out and back.info() == group.info()
    torch.testing.assert_close(back.transform(table), group.transform(table), rtol=0, atol=0)
    assert json.loads(json.dumps(back.to_dict())) == state


@pytest.mark.parametrize("kind", KINDS)
def test_problems_lists_every_missing_and_wrongly_typed_column(kind):
    _, table, params = example(kind)
    group = new_group(kind, table, params)
    assert group.problems(table.schema, "example") == []
    cols = table.column_names
    assert len(cols) >= 2, "the example needs two columns to show two missing ones"
    # every column missing: one line each, naming it
    lines = group.problems(pa.schema([("other", pa.int64())]), "training data")
    assert len(lines) == len(cols)
    for c, line in zip(cols, lines, strict=True):
        assert repr(c) in line and "'g'" in line and "training data" in line
        assert "\n" not in line
    # two missing and one of a type the kind cannot take: three lines
    refused = [t for t in ODD_TYPES if group.column_problem(cols[0], t)]
    assert refused, f"{kind} takes a column of any type; its column_problem refuses nothing"
    odd = pa.schema([pa.field(cols[0], refused[0]), pa.field("other", pa.int64())])
    lines = group.problems(odd, "data")
    assert len(lines) == len(cols)
    assert repr(cols[0]) in lines[0] and str(refused[0]) in lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_transform_before_fit_raises(kind):
    _, table, params = example(kind)
    group = new_group(kind, table, params)
    assert not group.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        group.transform(table)
    group.partial_fit(table)
    assert not group.is_fitted  # fitted only once finish() has run
    group.finish()
    assert group.is_fitted


@pytest.mark.parametrize("kind", KINDS)
def test_info_and_params_are_json(kind):
    group, _ = fitted(kind)
    for part in (group.info(), group.params(), group.fitted_state()):
        assert json.loads(json.dumps(part)) == part
    assert "kind" not in group.info()  # the model's group description adds it


@pytest.mark.parametrize("kind", KINDS)
def test_feeds_its_default_encoder_forward_and_backward(kind):
    cls = FEATURES.get(kind)
    group, table = fitted(kind)
    x = group.transform(table)
    groups = {"g": {"kind": kind, **group.info()}}
    spec = ModelSpec()  # no model.encoders: the kind's default encoder
    states = fit_encoder_states(spec, groups, {"g": x})
    torch.manual_seed(0)
    enc = InputEncoder(groups, spec, states)
    assert type(enc.encoders["g"]) is ENCODERS.get(cls.default_encoder)
    head = nn.Linear(enc.out_dim, 1)
    out = enc({"g": x})
    assert out.shape == (N, enc.out_dim) and torch.isfinite(out).all()
    head(out).square().mean().backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    for name, p in enc.named_parameters():
        assert p.grad is not None, f"{kind}: {name} got no gradient"
