"""Task kinds: how a label column becomes a target, a loss, metrics and predictions.

Kinds: ``binary`` (BCE with logits; auc, logloss, accuracy), ``multiclass``
(cross-entropy; accuracy, macro_f1, logloss), ``multilabel`` (BCE per label;
micro_auc, macro_auc), ``regression`` (MSE or Huber; rmse, mae, r2).

A missing label is normal: every task carries a mask, its loss is the mean over
labeled rows only (zero, with no gradient, when a batch has none) and its
metrics are computed on labeled rows only. Metrics are computed on whole
splits with numpy (AUC from ranks), never averaged per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from hydranet.errors import DataError, UserError
from hydranet.registry import Registry
from hydranet.spec import TaskSpec

# ---------------------------------------------------------------- losses
# A loss maps (outputs, targets) to per-element losses; hydranet applies the
# label mask and averages over labeled elements. A user's loss named by import
# path follows the same contract (a class is instantiated with no arguments).
LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss")


@LOSSES.register("bce")
def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, pos_weight: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )


@LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, target: torch.Tensor, **_: Any) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


@LOSSES.register("mse")
def mse_loss(pred: torch.Tensor, target: torch.Tensor, **_: Any) -> torch.Tensor:
    # the same numbers as F.mse_loss(reduction="none"), but its backward has a vmap batching
    # rule: the gradient balancers' K-batched backward would loop over the K rows otherwise
    return (pred - target).square()


@LOSSES.register("huber")
def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, *, huber_delta: float = 1.0, **_: Any
) -> torch.Tensor:
    return F.huber_loss(pred, target, delta=huber_delta, reduction="none")


# ---------------------------------------------------------------- metrics
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC from average ranks (Mann-Whitney U); ties count one half."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values; each run gets the mean of its 1-based ranks
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: not part of the macro average
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


HIGHER_IS_BETTER = {
    "auc": True,
    "accuracy": True,
    "macro_f1": True,
    "micro_auc": True,
    "macro_auc": True,
    "r2": True,
    "logloss": False,
    "rmse": False,
    "mae": False,
    "loss": False,
}


# ---------------------------------------------------------------- tasks
@dataclass
class Task:
    """One prediction target, fitted to its training labels (classes, scales)."""

    spec: TaskSpec
    state: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = ""
    default_loss: ClassVar[str] = ""
    all_metrics: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_dim(self) -> int:
        return 1

    @property
    def metric_names(self) -> list[str]:
        return list(self.spec.metrics or self.all_metrics)

    # -- labels
    def fit(self, table: pa.Table) -> Task:
        return self

    def encode(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Labels and mask (True where labeled) as numpy arrays."""
        raise NotImplementedError

    def _column(self, table: pa.Table, name: str) -> pa.ChunkedArray:
        if name not in table.column_names:
            raise DataError(
                f"label column {name!r} of task {self.name!r} not found; columns: {', '.join(table.column_names[:20])}"
            )
        return table.column(name)

    def _numeric(self, table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._column(table, name)
        if pa.types.is_boolean(col.type):
            col = pc.cast(col, pa.float64())
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_null(col.type)
        ):
            raise DataError(
                f"label column {name!r} of task {self.name!r} must be numeric for a {self.kind} task; got {col.type}"
                + ("; set 'positive' to the value that means 1" if self.kind == "binary" else "")
            )
        values = col.to_numpy(zero_copy_only=False).astype(np.float64) if len(col) else np.zeros(0)
        mask = ~np.isnan(values)
        return values, mask

    # -- training
    def output(self, out: torch.Tensor) -> torch.Tensor:
        """The model gives [B, out_dim]; single-output kinds use [B]."""
        return out

    def loss(self, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean loss over labeled elements; exactly zero (no NaN) when none is labeled."""
        out = self.output(out)
        fn = LOSSES.get(self.spec.loss or self.default_loss)
        if isinstance(fn, type):
            fn = fn()
        per = fn(out, target, **self._loss_kwargs(out))
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1.0)

    def _loss_kwargs(self, out: torch.Tensor) -> dict[str, Any]:
        return {"huber_delta": self.spec.huber_delta}

    def targets(self, values: np.ndarray) -> torch.Tensor:
        """Encoded labels as the training target tensor."""
        return torch.as_tensor(values, dtype=torch.float32)

    # -- inference
    def predict(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, pred: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def to_arrow(self, pred: np.ndarray) -> dict[str, pa.Array]:
        return {self.name: pa.array(pred.astype(np.float64))}


def _reduce_mask(mask: np.ndarray) -> np.ndarray:
    return mask if mask.ndim == 1 else mask.all(axis=1)


class BinaryTask(Task):
    kind = "binary"
    default_loss = "bce"
    all_metrics = ("auc", "logloss", "accuracy")

    def encode(self, table):
        if self.spec.positive is not None:
            col = self._column(table, self.spec.label_columns[0])
            mask = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            pos = self.spec.positive
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                pos = str(pos)
            values = np.asarray(
                pc.fill_null(pc.equal(col, pa.scalar(pos, type=col.type)), False).to_numpy(
                    zero_copy_only=False
                ),
                dtype=np.float64,
            )
            return values, mask
        values, mask = self._numeric(table, self.spec.label_columns[0])
        bad = mask & (values != 0) & (values != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"label column {self.spec.label_columns[0]!r} of binary task {self.name!r} must be 0/1; row {row} has {float(values[row])!r} (set 'positive' to map a value to 1)"
            )
        return np.where(mask, values, 0.0), mask

    def fit(self, table):
        pw = self.spec.pos_weight
        if pw == "auto":
            y, m = self.encode(table)
            pos = float(y[m].sum())
            neg = float(m.sum() - pos)
            pw = neg / max(pos, 1.0)
        self.state = {"pos_weight": pw}
        return self

    def _loss_kwargs(self, out):
        pw = self.state.get("pos_weight")
        return {
            "pos_weight": None
            if pw is None
            else torch.tensor(pw, dtype=out.dtype, device=out.device)
        }

    def output(self, out):
        return out.reshape(out.shape[0])

    def predict(self, out):
        return torch.sigmoid(self.output(out).float())

    def metrics(self, pred, labels, mask):
        p, y = pred[mask], labels[mask]
        res = {
            "auc": auc(p, y),
            "logloss": _logloss(p, y) if y.size else float("nan"),
            "accuracy": float(np.mean((p >= 0.5) == (y == 1))) if y.size else float("nan"),
        }
        return {k: res[k] for k in self.metric_names}


class MulticlassTask(Task):
    kind = "multiclass"
    default_loss = "ce"
    all_metrics = ("accuracy", "macro_f1", "logloss")

    @property
    def out_dim(self):
        return len(self.state["classes"])

    def fit(self, table):
        col = self._column(table, self.spec.label_columns[0]).drop_null()
        classes = pc.unique(col).to_pylist()
        if len(classes) < 2:
            raise DataError(
                f"multiclass task {self.name!r}: label column {self.spec.label_columns[0]!r} has {len(classes)} distinct value(s) in train; need at least 2"
            )
        self.state = {"classes": sorted(classes, key=lambda v: (str(type(v)), v))}
        return self

    def encode(self, table):
        col = self._column(table, self.spec.label_columns[0])
        classes = self.state["classes"]
        idx = pc.index_in(col, value_set=pa.array(classes, type=col.type if len(col) else None))
        mask = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        idx_np = np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        unseen = mask & (idx_np < 0)
        if unseen.any():
            # a class never seen in training cannot be predicted; it counts as unlabeled
            mask = mask & ~unseen
        return np.where(mask, idx_np, 0), mask

    def targets(self, values):
        return torch.as_tensor(values, dtype=torch.int64)

    def predict(self, out):
        return torch.softmax(out.float(), dim=-1)

    def metrics(self, pred, labels, mask):
        p, y = pred[mask], labels[mask].astype(np.int64)
        if not y.size:
            return {k: float("nan") for k in self.metric_names}
        hard = p.argmax(1)
        res = {
            "accuracy": float(np.mean(hard == y)),
            "macro_f1": _macro_f1(hard, y, p.shape[1]),
            "logloss": float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0)))),
        }
        return {k: res[k] for k in self.metric_names}

    def to_arrow(self, pred):
        classes = self.state["classes"]
        return {
            self.name: pa.array([classes[i] for i in pred.argmax(1)]),
            f"{self.name}_probs": pa.array(list(pred.astype(np.float64))),
        }


class MultilabelTask(Task):
    kind = "multilabel"
    default_loss = "bce"
    all_metrics = ("micro_auc", "macro_auc")

    @property
    def out_dim(self):
        return len(self.spec.label_columns)

    def encode(self, table):
        cols = [self._numeric(table, c) for c in self.spec.label_columns]
        values = np.stack([v for v, _ in cols], axis=1) if cols else np.zeros((0, 0))
        mask = np.stack([m for _, m in cols], axis=1)
        bad = mask & (values != 0) & (values != 1)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"label column {self.spec.label_columns[c]!r} of multilabel task {self.name!r} must be 0/1; row {r} has {float(values[r, c])!r}"
            )
        return np.where(mask, values, 0.0), mask

    def predict(self, out):
        return torch.sigmoid(out.float())

    def metrics(self, pred, labels, mask):
        res = {"micro_auc": auc(pred[mask], labels[mask])}
        per = [auc(pred[mask[:, j], j], labels[mask[:, j], j]) for j in range(pred.shape[1])]
        per = [a for a in per if not math.isnan(a)]
        res["macro_auc"] = float(np.mean(per)) if per else float("nan")
        return {k: res[k] for k in self.metric_names}

    def to_arrow(self, pred):
        return {self.name: pa.array(list(pred.astype(np.float64)))}


class RegressionTask(Task):
    kind = "regression"
    default_loss = "mse"
    all_metrics = ("rmse", "mae", "r2")

    def encode(self, table):
        values, mask = self._numeric(table, self.spec.label_columns[0])
        mask &= np.isfinite(np.where(mask, values, 0.0))
        return np.where(mask, values, 0.0), mask

    def fit(self, table):
        y, m = self.encode(table)
        if self.spec.standardize and m.any():
            mean, std = float(y[m].mean()), float(y[m].std())
            self.state = {"mean": mean, "std": std if std > 0 else 1.0}
        else:
            self.state = {"mean": 0.0, "std": 1.0}
        return self

    def targets(self, values):
        return torch.as_tensor(
            (values - self.state["mean"]) / self.state["std"], dtype=torch.float32
        )

    def output(self, out):
        return out.reshape(out.shape[0])

    def predict(self, out):
        return self.output(out).float() * self.state["std"] + self.state["mean"]

    def metrics(self, pred, labels, mask):
        p, y = pred[mask].astype(np.float64), labels[mask]
        if not y.size:
            return {k: float("nan") for k in self.metric_names}
        err = p - y
        var = float(np.var(y))
        res = {
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.mean(err**2)) / var if var > 0 else float("nan"),
        }
        return {k: res[k] for k in self.metric_names}


TASK_KINDS: Registry[type[Task]] = Registry("task kind")
for _cls in (BinaryTask, MulticlassTask, MultilabelTask, RegressionTask):
    TASK_KINDS.add(_cls.kind, _cls)


def build_task(spec: TaskSpec, state: dict[str, Any] | None = None) -> Task:
    cls = TASK_KINDS.get(spec.kind)
    task = cls(spec=spec, state=dict(state or {}))
    bad = [m for m in task.metric_names if m not in task.all_metrics]
    if bad:
        raise UserError(
            f"task {spec.name!r}: unknown metric {bad[0]!r} for a {spec.kind} task; allowed: {', '.join(task.all_metrics)}"
        )
    return task
