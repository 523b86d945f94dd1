"""``multiclass``: one of the classes seen in training; cross-entropy; accuracy, macro_f1, logloss.

Classes are the distinct non-null training values, sorted; a class never seen in training
counts as unlabeled. In a floating-point label column NaN is a missing label and an infinite
value a DataError naming its row (not a class of its own). Predictions are the most probable
class and ``<task>_probs``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import DataError
from hydranet.tasks.base import Task, seen_values
from hydranet.tasks.metrics import macro_f1


class MulticlassTask(Task):
    kind = "multiclass"
    default_loss = "ce"
    all_metrics = ("accuracy", "macro_f1", "logloss")
    prediction_range = (0.0, 1.0)

    @property
    def out_dim(self):
        return len(self.state["classes"])

    # -- statistics
    def new_stats(self):
        return {**super().new_stats(), "classes": set()}

    def update_stats(self, stats, table):
        col = self._label(table).drop_null()
        stats["labeled"] += len(col)
        stats["classes"].update(pc.unique(col).to_pylist())

    def finish_fit(self, stats):
        super().finish_fit(stats)
        classes = stats["classes"]
        if len(classes) < 2:
            raise DataError(
                f"multiclass task {self.name!r}: label column {self.spec.label_columns[0]!r} has {len(classes)} distinct value(s) in train ({seen_values(classes, 10)}); need at least 2"
            )
        self.state = {"classes": sorted(classes, key=lambda v: (str(type(v)), v))}
        return self

    # -- labels
    def _label(self, table: pa.Table) -> pa.ChunkedArray:
        column = self.spec.label_columns[0]
        col = self._column(table, column)
        if not pa.types.is_floating(col.type):
            return col
        values = col.to_numpy(zero_copy_only=False)
        bad = np.isinf(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"label column {column!r} of multiclass task {self.name!r}: row {row} is {float(values[row])!r}; a label must be finite (leave it empty for no label)"
            )
        nan = pc.is_nan(col)
        return pc.if_else(nan, pa.scalar(None, col.type), col) if pc.any(nan).as_py() else col

    def encode(self, table):
        col = self._label(table)
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

    # -- inference
    def predict(self, out):
        return torch.softmax(out.float(), dim=-1)

    def metrics(self, pred, labels, mask):
        p, y = pred[mask], labels[mask].astype(np.int64)
        if not y.size:
            return {k: float("nan") for k in self.metric_names}
        hard = p.argmax(1)
        res = {
            "accuracy": float(np.mean(hard == y)),
            "macro_f1": macro_f1(hard, y, p.shape[1]),
            "logloss": float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0)))),
        }
        return {k: res[k] for k in self.metric_names}

    # -- prediction columns
    def _class_type(self) -> pa.DataType:
        try:
            return pa.array(self.state["classes"]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python types: shown as text
            return pa.string()

    def output_schema(self):
        return [
            pa.field(self.name, self._class_type()),
            pa.field(f"{self.name}_probs", pa.list_(pa.float64())),
        ]

    def to_arrow(self, pred):
        classes = self.state["classes"]
        label_type = self._class_type()
        labels = [classes[i] for i in pred.argmax(1)]
        if pa.types.is_string(label_type):
            labels = [str(c) for c in labels]
        n, k = pred.shape
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        probs = pa.ListArray.from_arrays(offsets, pa.array(pred.astype(np.float64).ravel()))
        return {self.name: pa.array(labels, type=label_type), f"{self.name}_probs": probs}

    def describe_output(self):
        out = super().describe_output()
        out["output"] = {
            self.name: "most probable class",
            f"{self.name}_probs": "probability per class, in 'classes' order",
        }
        out["classes"] = self.state["classes"]
        return out

    # -- example
    @classmethod
    def example_spec(cls):
        return {"name": "k", "kind": "multiclass"}

    @classmethod
    def example_table(cls, n, seed):
        values = np.random.default_rng(seed).choice(["a", "b", "c"], size=n).tolist()
        values[:4] = [None, "a", "b", "c"]
        return pa.table({"k": pa.array(values, type=pa.string())})
