import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from hydranet.errors import DataError
from hydranet.spec import TaskSpec
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
