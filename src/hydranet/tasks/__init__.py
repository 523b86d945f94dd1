"""Task kinds: how a label column becomes a target, a loss, metrics and predictions.

Kinds: ``binary`` (BCE with logits; auc, logloss, accuracy), ``multiclass``
(cross-entropy; accuracy, macro_f1, logloss), ``multilabel`` (BCE per label;
micro_auc, macro_auc), ``regression`` (MSE or Huber; rmse, mae, r2). A kind is one
file here and one line in ``TASK_KINDS``; everything it does is a method of its class
(see :mod:`hydranet.tasks.base`), and tests/test_task_contract.py checks every
registered kind from the example it gives.

A missing label is normal: every task carries a mask, its loss is the mean over
labeled rows only (zero, with no gradient, when a batch has none) and its
metrics are computed on labeled rows only. Metrics are computed on whole
splits with numpy (AUC from ranks), never averaged per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydranet.errors import UserError
from hydranet.registry import Registry
from hydranet.tasks.base import Task
from hydranet.tasks.binary import BinaryTask
from hydranet.tasks.losses import LOSSES, bce_loss, ce_loss, huber_loss, mse_loss
from hydranet.tasks.metrics import HIGHER_IS_BETTER, auc
from hydranet.tasks.multiclass import MulticlassTask
from hydranet.tasks.multilabel import MultilabelTask
from hydranet.tasks.regression import RegressionTask

if TYPE_CHECKING:
    from hydranet.spec_tables import TaskSpec

__all__ = [
    "HIGHER_IS_BETTER",
    "LOSSES",
    "TASK_KINDS",
    "BinaryTask",
    "MulticlassTask",
    "MultilabelTask",
    "RegressionTask",
    "Task",
    "auc",
    "bce_loss",
    "build_task",
    "ce_loss",
    "huber_loss",
    "mse_loss",
]

TASK_KINDS: Registry[type[Task]] = Registry("task kind")
for _cls in (BinaryTask, MulticlassTask, MultilabelTask, RegressionTask):
    TASK_KINDS.add(_cls.kind, _cls)


def build_task(spec: TaskSpec, state: dict[str, Any] | None = None) -> Task:
    """The task of ``spec``, unfitted, or fitted when given its saved ``state``."""
    cls = TASK_KINDS.get(spec.kind)
    problems = cls.check_spec(spec)
    if problems:
        raise UserError(f"task {spec.name!r}: {problems[0]}")
    task = cls(spec=spec, state=dict(state or {}))
    bad = [m for m in task.metric_names if m not in task.all_metrics]
    if bad:
        raise UserError(
            f"task {spec.name!r}: unknown metric {bad[0]!r} for a {spec.kind} task; allowed: {', '.join(task.all_metrics)}"
        )
    return task
