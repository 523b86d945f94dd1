"""``regression``: a real-valued target; MSE or Huber; rmse, mae, r2.

With ``standardize`` (the default) the model trains on (y - mean) / std of the training
labels; predictions and metrics stay in the label's units. A missing (null or NaN) label is
unlabeled; an infinite one is a DataError naming its row, not silently unlabeled (it is more
likely a broken upstream value than a missing one). A label constant over the training rows
is a DataError: there is nothing to learn.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

from hydranet.errors import DataError
from hydranet.tasks.base import Task


class RegressionTask(Task):
    kind = "regression"
    default_loss = "mse"
    all_metrics = ("rmse", "mae", "r2")
    options = ("standardize",)
    continuous_target = True

    # -- labels
    def encode(self, table):
        column = self.spec.label_columns[0]
        values, mask = self._numeric(table, column)
        bad = mask & ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"label column {column!r} of regression task {self.name!r}: row {row} is {float(values[row])!r}; a label must be finite (leave it empty for no label)"
            )
        return np.where(mask, values, 0.0), mask

    def targets(self, values):
        return torch.as_tensor(
            (values - self.state["mean"]) / self.state["std"], dtype=torch.float32
        )

    # -- statistics: count, mean and M2 merged chunk by chunk (Chan et al.), range for the check
    def new_stats(self):
        return {**super().new_stats(), "mean": 0.0, "m2": 0.0, "lo": math.inf, "hi": -math.inf}

    def update_stats(self, stats, table):
        y, m = self.encode(table)
        if not m.any():
            return
        v = y[m]
        n_a, n_b, mean_b = stats["labeled"], v.size, float(v.mean())
        total = n_a + n_b
        delta = mean_b - stats["mean"]
        stats["mean"] += delta * n_b / total
        stats["m2"] += float(((v - mean_b) ** 2).sum()) + delta * delta * n_a * n_b / total
        stats["labeled"] = total
        stats["lo"] = min(stats["lo"], float(v.min()))
        stats["hi"] = max(stats["hi"], float(v.max()))

    def finish_fit(self, stats):
        super().finish_fit(stats)
        if stats["lo"] == stats["hi"]:
            raise DataError(
                f"regression task {self.name!r}: label column {self.spec.label_columns[0]!r} is {stats['lo']!r} in all {stats['labeled']:,} labeled training rows; a constant label leaves nothing to learn"
            )
        if self.spec.standardize:
            std = math.sqrt(stats["m2"] / stats["labeled"])
            self.state = {"mean": stats["mean"], "std": std if std > 0 else 1.0}
        else:
            self.state = {"mean": 0.0, "std": 1.0}
        return self

    # -- inference
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

    def describe_output(self):
        out = super().describe_output()
        out["output"] = {self.name: "predicted value, in the label's units"}
        return out

    # -- example
    @classmethod
    def example_spec(cls):
        return {"name": "v", "kind": "regression"}

    @classmethod
    def example_table(cls, n, seed):
        values = (np.random.default_rng(seed).normal(size=n) * 3.0 + 10.0).tolist()
        values[0] = None
        return pa.table({"v": pa.array(values, type=pa.float64())})
