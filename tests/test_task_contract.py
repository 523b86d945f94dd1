"""Contract tests generated from TASK_KINDS: every registered kind, from the example it gives
(``example_spec`` + ``example_table``), gets the same checks without anyone writing a test."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from hydranet.errors import DataError
from hydranet.spec import Spec, TaskSpec
from hydranet.tasks import TASK_KINDS, build_task

KINDS = TASK_KINDS.names()
N = 24


@pytest.fixture(params=KINDS)
def case(request):
    cls = TASK_KINDS.get(request.param)
    spec = TaskSpec(**cls.example_spec())
    table = cls.example_table(N, seed=0)
    task = build_task(spec).fit(table)
    return cls, spec, table, task


def _out(task, seed=0):
    return torch.randn(N, task.out_dim, generator=torch.Generator().manual_seed(seed))


def test_registered_under_its_kind_name_and_the_example_spec_is_valid(case):
    cls, spec, _, _ = case
    assert TASK_KINDS.get(cls.kind) is cls and spec.kind == cls.kind
    assert cls.check_spec(spec) == []
    # the example task passes the Spec's load-time checks as part of a whole spec
    Spec.from_dict({"data": {"numeric": ["x"]}, "tasks": [cls.example_spec()]})


def test_encode_shapes_and_the_missing_row_is_masked(case):
    _, _, table, task = case
    values, mask = task.encode(table)
    assert values.shape == mask.shape and values.shape[0] == N
    assert mask.dtype == bool
    assert not mask[0].any()  # row 0 of every example has no label
    assert mask[1:].any()


def test_targets_dtype_and_shape(case):
    _, _, table, task = case
    values, _ = task.encode(table)
    t = task.targets(values)
    assert isinstance(t, torch.Tensor) and t.shape[0] == N
    assert t.dtype in (torch.float32, torch.int64)


def test_loss_is_finite_with_a_backward_and_ignores_the_missing_row(case):
    _, _, table, task = case
    values, mask = task.encode(table)
    out = _out(task).requires_grad_()
    loss = task.loss(out, task.targets(values), torch.as_tensor(mask))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert torch.all(out.grad[0] == 0)  # row 0 is unlabeled


def test_loss_is_exactly_zero_without_labeled_rows(case):
    _, _, table, task = case
    values, mask = task.encode(table)
    out = _out(task).requires_grad_()
    loss = task.loss(out, task.targets(values), torch.zeros_like(torch.as_tensor(mask)))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(out.grad == 0)


def test_predict_shape_and_range(case):
    cls, _, _, task = case
    pred = task.predict(_out(task) * 10).numpy()
    assert pred.shape == ((N,) if task.out_dim == 1 else (N, task.out_dim))
    lo, hi = cls.prediction_range
    assert np.isfinite(pred).all() and (pred >= lo).all() and (pred <= hi).all()


def test_metrics_keys_are_the_metric_names(case):
    _, _, table, task = case
    values, mask = task.encode(table)
    pred = task.predict(_out(task)).numpy()
    m = task.metrics(pred, values, mask)
    assert list(m) == task.metric_names
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())
    # a subset asked for in the spec is what is reported
    one = task.metric_names[-1:]
    sub = build_task(task.spec.model_copy(update={"metrics": one}), task.state)
    assert list(sub.metrics(pred, values, mask)) == one


@pytest.mark.parametrize("rows", [N, 0])
def test_to_arrow_columns_match_output_schema_and_describe_output(case, rows):
    _, _, _, task = case
    pred = task.predict(_out(task)).numpy()[:rows]
    cols = task.to_arrow(pred)
    schema = task.output_schema()
    assert [(name, col.type) for name, col in cols.items()] == [(f.name, f.type) for f in schema]
    assert all(len(col) == rows for col in cols.values())
    pa.table(cols)  # one table of equal-length columns
    desc = task.describe_output()
    assert desc["name"] == task.name and desc["kind"] == task.kind
    assert list(desc["output"]) == list(cols)
    json.dumps(desc)  # served as JSON by the metadata endpoint


def test_state_json_round_trip_predicts_the_same(case):
    _, spec, table, task = case
    saved = json.loads(json.dumps(task.state))
    again = build_task(TaskSpec.model_validate(json.loads(spec.model_dump_json())), saved)
    assert again.out_dim == task.out_dim
    out = _out(task)
    torch.testing.assert_close(again.predict(out), task.predict(out), rtol=0, atol=0)
    for a, b in zip(again.encode(table), task.encode(table), strict=True):
        np.testing.assert_array_equal(a, b)
    values, _ = task.encode(table)
    torch.testing.assert_close(again.targets(values), task.targets(values), rtol=0, atol=0)
    pred = task.predict(out).numpy()
    assert again.to_arrow(pred).keys() == task.to_arrow(pred).keys()


def test_streaming_statistics_over_chunks_equal_the_whole_fit(case):
    _, spec, table, task = case
    streamed = build_task(spec)
    stats = streamed.new_stats()
    for start in range(0, N, 7):  # uneven chunks, one of them holding the missing row
        streamed.update_stats(stats, table.slice(start, 7))
    streamed.finish_fit(stats)
    assert streamed.state.keys() == task.state.keys()
    for k, v in task.state.items():
        assert streamed.state[k] == (pytest.approx(v, rel=1e-12) if isinstance(v, float) else v)


def test_no_labeled_rows_is_a_data_error_naming_the_task(case):
    _, spec, table, _ = case
    empty = table.slice(0, 1)  # row 0 only: no label
    with pytest.raises(DataError, match=f"task {spec.name!r}.*no labeled rows"):
        build_task(spec).fit(empty)
