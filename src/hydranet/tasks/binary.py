"""``binary``: a 0/1 target; BCE with logits; auc, logloss, accuracy.

The label is 0/1 (numeric or boolean), or any type with ``positive``: a value or a list of
values that mean 1, every other non-null value meaning 0. Training labels with no positive or
no negative are a DataError naming the values seen (a ``positive`` that matches nothing,
such as ``">50K"`` against ``" >50K"``, would otherwise train to an AUC of nan).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import DataError
from hydranet.tasks.base import Task, seen_values
from hydranet.tasks.metrics import auc, logloss

if TYPE_CHECKING:
    from hydranet.spec_tables import TaskSpec

_SEEN = 10  # distinct label values kept for the error message


class BinaryTask(Task):
    kind = "binary"
    default_loss = "bce"
    all_metrics = ("auc", "logloss", "accuracy")
    options = ("positive", "pos_weight")
    prediction_range = (0.0, 1.0)

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> list[str]:
        problems = super().check_spec(spec)
        if isinstance(spec.positive, list) and not spec.positive:
            problems.append("'positive' is an empty list; give the label value(s) that mean 1")
        return problems

    @property
    def positives(self) -> list[Any] | None:
        """The values that mean 1, or None for a 0/1 label."""
        pos = self.spec.positive
        return None if pos is None else list(pos) if isinstance(pos, list) else [pos]

    # -- labels
    def encode(self, table):
        column = self.spec.label_columns[0]
        if self.positives is None:
            values, mask = self._numeric(
                table, column, hint="; set 'positive' to the value that means 1"
            )
            bad = mask & (values != 0) & (values != 1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"label column {column!r} of binary task {self.name!r} must be 0/1; row {row} has {float(values[row])!r} (set 'positive' to map a value to 1)"
                )
            return np.where(mask, values, 0.0), mask
        col = self._column(table, column)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        mask = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        hit = pc.fill_null(pc.is_in(col, value_set=self._value_set(col.type)), False)
        return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=np.float64), mask

    def _value_set(self, typ: pa.DataType) -> pa.Array:
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return pa.array([str(v) for v in self.positives], type=typ)
        return pa.concat_arrays([self._as_type(v, typ) for v in self.positives])

    def _as_type(self, value: Any, typ: pa.DataType) -> pa.Array:
        try:
            return pa.array([value], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
        try:  # text such as "1" for an integer column: Arrow's cast parses it
            return pa.array([value]).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise DataError(
                f"binary task {self.name!r}: positive value {value!r} cannot be compared with label column {self.spec.label_columns[0]!r} of type {typ}"
            ) from None

    # -- statistics
    def new_stats(self):
        return {**super().new_stats(), "positive": 0.0, "seen": set()}

    def update_stats(self, stats, table):
        y, m = self.encode(table)  # also validates the labels (0/1, numeric)
        stats["labeled"] += int(m.sum())
        stats["positive"] += float(y[m].sum())
        if len(stats["seen"]) <= _SEEN:
            col = self._column(table, self.spec.label_columns[0]).drop_null()
            stats["seen"].update(pc.unique(col).to_pylist())

    def finish_fit(self, stats):
        super().finish_fit(stats)
        n, pos = stats["labeled"], stats["positive"]
        if pos == 0 or pos == n:
            raise DataError(self._one_class(stats))
        pw = self.spec.pos_weight
        if pw == "auto":
            pw = (n - pos) / pos
        self.state = {"pos_weight": pw}
        return self

    def _one_class(self, stats: dict[str, Any]) -> str:
        none_of = "positive" if stats["positive"] == 0 else "negative"
        pos = self.spec.positive
        if pos is None:
            why = "a 0/1 label needs both values (or set 'positive')"
        else:
            target = f"positive = {pos!r}"
            why = (
                f"none of them equals {target}" if none_of == "positive" else f"all equal {target}"
            )
        return f"binary task {self.name!r}: label column {self.spec.label_columns[0]!r} has no {none_of} row among its {stats['labeled']:,} labeled training rows; values seen: {seen_values(stats['seen'], _SEEN)}; {why}"

    def label_summary(self, labels, mask):
        summary = super().label_summary(labels, mask)
        return summary + (f", {float(np.mean(labels[mask])):.3f} positive" if mask.any() else "")

    # -- training and inference
    def _loss_kwargs(self, out):
        pw = self.state.get("pos_weight")
        if pw is None:
            return {"pos_weight": None}
        # Made once per (value, dtype, device) and kept: a tensor made from a Python float
        # on CUDA is a host-to-device copy, which a CUDA graph capture of the step does not
        # allow; the graph's eager warm-up steps make it, the captured step reuses it.
        key = (pw, out.dtype, out.device)
        cached = getattr(self, "_pos_weight_tensor", None)
        if cached is None or cached[0] != key:
            cached = (key, torch.tensor(pw, dtype=out.dtype, device=out.device))
            self._pos_weight_tensor = cached
        return {"pos_weight": cached[1]}

    def output(self, out):
        return out.reshape(out.shape[0])

    def predict(self, out):
        return torch.sigmoid(self.output(out).float())

    def metrics(self, pred, labels, mask):
        p, y = pred[mask], labels[mask]
        res = {
            "auc": auc(p, y),
            "logloss": logloss(p, y) if y.size else float("nan"),
            "accuracy": float(np.mean((p >= 0.5) == (y == 1))) if y.size else float("nan"),
        }
        return {k: res[k] for k in self.metric_names}

    def describe_output(self):
        out = super().describe_output()
        out["output"] = {self.name: "probability of the positive label"}
        if self.spec.positive is not None:
            out["positive"] = self.spec.positive
        return out

    # -- example
    @classmethod
    def example_spec(cls):
        return {"name": "y", "kind": "binary", "positive": ["yes", "y"], "pos_weight": "auto"}

    @classmethod
    def example_table(cls, n, seed):
        values = np.random.default_rng(seed).choice(["yes", "y", "no", "n"], size=n).tolist()
        values[:3] = [None, "yes", "no"]
        return pa.table({"y": pa.array(values, type=pa.string())})
