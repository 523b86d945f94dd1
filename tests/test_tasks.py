import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from hydranet.errors import DataError
from hydranet.spec import Spec, TaskSpec
from hydranet.tasks import auc, build_task


def _pairwise_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 10, size=300).astype(float)  # many ties
    y = (rng.random(300) < 0.3).astype(float)
    assert auc(s, y) == pytest.approx(_pairwise_auc(s, y), abs=1e-12)


def test_auc_undefined_with_one_class():
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1.0, 1.0])))


def test_binary_loss_ignores_unlabeled_rows():
    task = build_task(TaskSpec(name="y", kind="binary"))
    table = pa.table({"y": pa.array([1, None, 0, 1, None], type=pa.int64())})
    values, mask = task.encode(table)
    assert mask.tolist() == [True, False, True, True, False]
    logits = torch.tensor([[0.3], [5.0], [-1.0], [2.0], [-7.0]])
    loss = task.loss(logits, task.targets(values), torch.as_tensor(mask))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_loss_with_no_labels_is_zero_not_nan():
    task = build_task(TaskSpec(name="y", kind="binary"))
    out = torch.randn(4, 1, requires_grad=True)
    loss = task.loss(out, torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(out.grad == 0)


def test_binary_rejects_non_01_and_text_labels():
    task = build_task(TaskSpec(name="y", kind="binary"))
    with pytest.raises(DataError, match="row 1 has 2.0"):
        task.encode(pa.table({"y": [0, 2]}))
    with pytest.raises(DataError, match="must be numeric"):
        task.encode(pa.table({"y": ["yes", "no"]}))


def test_binary_positive_value_maps_text():
    task = build_task(TaskSpec(name="y", kind="binary", positive="yes"))
    values, mask = task.encode(pa.table({"y": ["yes", "no", None]}))
    assert values.tolist()[:2] == [1.0, 0.0] and mask.tolist() == [True, True, False]


def test_pos_weight_auto():
    task = build_task(TaskSpec(name="y", kind="binary", pos_weight="auto")).fit(
        pa.table({"y": [1, 0, 0, 0]})
    )
    assert task.state["pos_weight"] == pytest.approx(3.0)


def test_multiclass_metrics_and_unseen_class():
    task = build_task(TaskSpec(name="k", kind="multiclass")).fit(
        pa.table({"k": ["a", "b", "c", "a"]})
    )
    assert task.out_dim == 3
    values, mask = task.encode(pa.table({"k": ["a", "c", "zzz", None]}))
    assert values[:2].tolist() == [0, 2] and mask.tolist() == [True, True, False, False]
    pred = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [1, 0, 0], [1, 0, 0]])
    m = task.metrics(pred, values, mask)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["logloss"] == pytest.approx(-(np.log(0.8) + np.log(0.7)) / 2)


def test_regression_standardizes_and_reports_original_units():
    task = build_task(TaskSpec(name="v", kind="regression")).fit(
        pa.table({"v": [10.0, 20.0, 30.0]})
    )
    values, mask = task.encode(pa.table({"v": [10.0, 20.0, 30.0]}))
    t = task.targets(values)
    assert t.mean().item() == pytest.approx(0.0, abs=1e-6)
    preds = task.predict(t[:, None]).numpy()
    np.testing.assert_allclose(preds, values, rtol=1e-6)
    m = task.metrics(preds, values, mask)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-4) and m["r2"] == pytest.approx(1.0)


def test_multilabel_masks_per_label():
    task = build_task(TaskSpec(name="m", kind="multilabel", columns=["p", "q"]))
    values, mask = task.encode(pa.table({"p": [1, 0, None, 1], "q": [0, 1, 1, None]}))
    assert mask.tolist() == [[True, True], [True, True], [False, True], [True, False]]
    pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.7], [0.6, 0.5]])
    m = task.metrics(pred, values, mask)
    assert m["micro_auc"] == pytest.approx(1.0) and m["macro_auc"] == pytest.approx(1.0)


def test_unknown_metric_is_a_user_error():
    from hydranet.errors import UserError

    with pytest.raises(UserError, match="unknown metric 'rmse'"):
        build_task(TaskSpec(name="y", kind="binary", metrics=["rmse"]))


# ---------------------------------------------------------------- labels nothing can be learned from
CENSUS_INCOME = [" - 50000.", " >50K", None, " - 50000."]


def test_binary_positive_matching_no_value_names_the_values_seen():
    # the census label has a leading space: positive = ">50K" matches none of it
    task = build_task(TaskSpec(name="income", kind="binary", positive=">50K"))
    with pytest.raises(DataError) as e:
        task.fit(pa.table({"income": CENSUS_INCOME}))
    msg = str(e.value)
    assert "binary task 'income'" in msg and "label column 'income'" in msg
    assert "no positive row" in msg and "3 labeled" in msg
    assert "values seen: ' - 50000.', ' >50K'" in msg
    assert "none of them equals positive = '>50K'" in msg


def test_binary_with_no_negative_is_a_data_error():
    task = build_task(TaskSpec(name="y", kind="binary", positive=["a", "b"]))
    with pytest.raises(DataError, match=r"no negative row.*values seen: 'a', 'b'.*all equal"):
        task.fit(pa.table({"y": ["a", "b", None, "a"]}))
    with pytest.raises(DataError, match=r"no positive row.*values seen: 0; a 0/1 label needs"):
        build_task(TaskSpec(name="y", kind="binary")).fit(pa.table({"y": [0, 0, None]}))


def test_one_class_binary_fails_the_streaming_fit_too():
    from hydranet.data.preprocess import Preprocessor
    from hydranet.data.stream import fit_streaming

    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [1, 1, None, 1]})
    task = build_task(TaskSpec(name="y", kind="binary"))
    with pytest.raises(DataError, match="no negative row among its 3 labeled"):
        fit_streaming(
            Preprocessor.tabular(["x"], []), [task], iter(table.to_batches(max_chunksize=2))
        )


def test_positive_list_any_value_is_positive():
    task = build_task(TaskSpec(name="y", kind="binary", positive=[">50K", ">50K."]))
    values, mask = task.encode(pa.table({"y": [">50K", "<=50K", ">50K.", None, "<=50K."]}))
    assert values.tolist()[:3] == [1.0, 0.0, 1.0] and values[4] == 0.0
    assert mask.tolist() == [True, True, True, False, True]
    assert task.fit(pa.table({"y": [">50K", "<=50K", ">50K."]})).describe_output()["positive"] == [
        ">50K",
        ">50K.",
    ]


def test_positive_against_a_numeric_or_dictionary_column():
    ints = pa.table({"y": pa.array([3, 7, 5, None], type=pa.int64())})
    values, mask = build_task(TaskSpec(name="y", kind="binary", positive=[3, "5"])).encode(ints)
    assert values.tolist()[:3] == [1.0, 0.0, 1.0] and mask.tolist() == [True, True, True, False]
    words = pa.table({"y": pa.array(["yes", "no", "yes"]).dictionary_encode()})
    values, _ = build_task(TaskSpec(name="y", kind="binary", positive="yes")).encode(words)
    assert values.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(
        DataError, match="positive value 'yes' cannot be compared.*'y' of type int64"
    ):
        build_task(TaskSpec(name="y", kind="binary", positive="yes")).encode(ints)


def test_constant_regression_label_is_a_data_error():
    task = build_task(TaskSpec(name="v", kind="regression", standardize=False))
    with pytest.raises(DataError, match=r"task 'v'.*is 2.5 in all 3 labeled.*nothing to learn"):
        task.fit(pa.table({"v": [2.5, None, 2.5, 2.5]}))


def test_infinite_regression_label_is_a_data_error_naming_the_row():
    task = build_task(TaskSpec(name="v", kind="regression"))
    table = pa.table({"v": [1.0, float("nan"), None, float("-inf"), float("inf")]})
    with pytest.raises(DataError, match="column 'v' of regression task 'v': row 3 is -inf"):
        task.fit(table)
    # NaN and null stay "no label"
    values, mask = task.fit(pa.table({"v": [1.0, float("nan"), None, 4.0]})).encode(
        pa.table({"v": [1.0, float("nan"), None, 4.0]})
    )
    assert mask.tolist() == [True, False, False, True] and task.state["mean"] == 2.5


def test_kind_spec_checks_are_reported_at_load_with_the_task_key():
    from hydranet.errors import SpecError

    spec = {
        "data": {"numeric": ["x"]},
        "tasks": [
            {"name": "m", "kind": "multilabel"},
            {"name": "v", "kind": "regression", "positive": "yes", "columns": ["a"]},
            {"name": "y", "kind": "binary", "positive": []},
        ],
    }
    with pytest.raises(SpecError) as e:
        Spec.from_dict(spec)
    assert e.value.problems == [
        ("tasks[0]", "a multilabel task needs 'columns', one 0/1 column per label"),
        ("tasks[1]", "'columns' does not apply to a regression task; give one label 'column'"),
        ("tasks[1]", "'positive' does not apply to a regression task"),
        ("tasks[2]", "'positive' is an empty list; give the label value(s) that mean 1"),
    ]
    # a saved resolved spec carries every default: those are not "set"
    ok = Spec.from_dict({"data": {"numeric": ["x"]}, "tasks": [{"name": "y", "kind": "binary"}]})
    assert Spec.from_dict(ok.to_dict()).tasks[0].standardize is True


def test_tasks_do_not_import_the_spec_at_run_time():
    # spec.py imports the tasks (to check kinds); the other way round would be a cycle
    import ast
    from pathlib import Path

    import hydranet.tasks

    for path in Path(hydranet.tasks.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level, outside `if TYPE_CHECKING:`
            if isinstance(node, ast.ImportFrom):
                assert node.module != "hydranet.spec", path.name
            elif isinstance(node, ast.Import):
                assert all(a.name != "hydranet.spec" for a in node.names), path.name
