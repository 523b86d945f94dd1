"""``multilabel``: one 0/1 column per label (``columns``); BCE per label; micro_auc, macro_auc.

Each label has its own mask: a row may be labeled for some labels and not others. A label
column that is all 0 or all 1 (or never labeled) over the training rows is a DataError, as a
binary task with one class is: it leaves nothing to learn and its AUC is undefined.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from hydranet.errors import DataError
from hydranet.tasks.base import Task
from hydranet.tasks.metrics import auc

if TYPE_CHECKING:
    from hydranet.spec_tables import TaskSpec


class MultilabelTask(Task):
    kind = "multilabel"
    default_loss = "bce"
    all_metrics = ("micro_auc", "macro_auc")
    options = ("columns",)
    prediction_range = (0.0, 1.0)

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> list[str]:
        problems = super().check_spec(spec)
        if not spec.columns:
            problems.append("a multilabel task needs 'columns', one 0/1 column per label")
        return problems

    @property
    def out_dim(self):
        return len(self.spec.label_columns)

    def encode(self, table):
        cols = [self._numeric(table, c) for c in self.spec.label_columns]
        values = np.stack([v for v, _ in cols], axis=1)
        mask = np.stack([m for _, m in cols], axis=1)
        bad = mask & (values != 0) & (values != 1)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"label column {self.spec.label_columns[c]!r} of multilabel task {self.name!r} must be 0/1; row {r} has {float(values[r, c])!r}"
            )
        return np.where(mask, values, 0.0), mask

    # -- statistics: labeled rows and positives per label column
    def new_stats(self):
        k = len(self.spec.label_columns)
        return {**super().new_stats(), "per_label": np.zeros(k), "positive": np.zeros(k)}

    def update_stats(self, stats, table):
        y, m = self.encode(table)
        stats["labeled"] += int(m.any(axis=1).sum())
        stats["per_label"] += m.sum(axis=0)
        stats["positive"] += (y * m).sum(axis=0)

    def finish_fit(self, stats):
        super().finish_fit(stats)
        for j, column in enumerate(self.spec.label_columns):
            n, pos = int(stats["per_label"][j]), int(stats["positive"][j])
            if pos == 0 or pos == n:
                value = (
                    "never labeled"
                    if n == 0
                    else f"{0 if pos == 0 else 1} in all {n:,} labeled training rows"
                )
                raise DataError(
                    f"multilabel task {self.name!r}: label column {column!r} is {value}; a constant label leaves nothing to learn (drop it from 'columns')"
                )
        return self

    def predict(self, out):
        return torch.sigmoid(out.float())

    def metrics(self, pred, labels, mask):
        res = {"micro_auc": auc(pred[mask], labels[mask])}
        per = [auc(pred[mask[:, j], j], labels[mask[:, j], j]) for j in range(pred.shape[1])]
        per = [a for a in per if not math.isnan(a)]
        res["macro_auc"] = float(np.mean(per)) if per else float("nan")
        return {k: res[k] for k in self.metric_names}

    def output_schema(self):
        return [pa.field(self.name, pa.list_(pa.float64()))]

    def to_arrow(self, pred):
        n, k = pred.shape
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        return {
            self.name: pa.ListArray.from_arrays(offsets, pa.array(pred.astype(np.float64).ravel()))
        }

    def describe_output(self):
        out = super().describe_output()
        out["output"] = {self.name: "probability per label, in 'labels' order"}
        out["labels"] = self.spec.label_columns
        return out

    @classmethod
    def example_spec(cls):
        return {"name": "m", "kind": "multilabel", "columns": ["m_a", "m_b"]}

    @classmethod
    def example_table(cls, n, seed):
        rng = np.random.default_rng(seed)
        cols = {}
        for name in ("m_a", "m_b"):
            values = rng.integers(0, 2, size=n).tolist()
            values[:3] = [None, 0, 1]
            cols[name] = pa.array(values, type=pa.int64())
        return pa.table(cols)
