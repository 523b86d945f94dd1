"""The task base class: what every task kind provides, written once per kind.

A kind is one subclass of :class:`Task`, registered in ``TASK_KINDS`` under its ``kind``
name. It owns:

* its spec checks (``check_spec``): which TaskSpec options it takes;
* its label statistics (``new_stats`` / ``update_stats`` / ``finish_fit``), mergeable chunk by
  chunk, so the in-memory ``fit`` and the streaming fit are one code path; training labels
  that leave nothing to learn are a DataError there, not a model that trains to nan;
* target encoding (``encode`` → labels and mask, ``targets`` → the training tensor);
* its loss (a masked mean) and predictions (``predict``);
* its metrics, on whole splits;
* its prediction columns: ``output_schema`` (Arrow fields), ``to_arrow`` (the columns) and
  ``describe_output`` (the metadata endpoint's description of them);
* a tiny example (``example_spec``, ``example_table``) from which tests/test_task_contract.py
  checks every registered kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import DataError
from hydranet.tasks.losses import LOSSES

if TYPE_CHECKING:
    from hydranet.spec_tables import TaskSpec

# TaskSpec options that only some kinds read; a kind lists the ones it takes in ``options``.
_KIND_OPTIONS = ("columns", "positive", "pos_weight", "standardize")


@dataclass
class Task:
    """One prediction target, fitted to its training labels (classes, scales)."""

    spec: TaskSpec
    state: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = ""
    default_loss: ClassVar[str] = ""
    all_metrics: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[str, ...]] = ()
    # bounds of every value ``predict`` returns (a probability: 0..1)
    prediction_range: ClassVar[tuple[float, float]] = (-float("inf"), float("inf"))
    # the encoded label is a quantity, not a class: target-aware binning regresses on it
    continuous_target: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_dim(self) -> int:
        return 1

    @property
    def metric_names(self) -> list[str]:
        return list(self.spec.metrics or self.all_metrics)

    # -- spec
    @classmethod
    def check_spec(cls, spec: TaskSpec) -> list[str]:
        """Problems of ``spec`` for this kind, one line each naming the key; [] when fine."""
        problems = []
        for key in _KIND_OPTIONS:
            # compared with the default, not "was it set": a saved resolved spec sets every key
            if (
                key not in cls.options
                and getattr(spec, key) != type(spec).model_fields[key].default
            ):
                problems.append(
                    f"{key!r} does not apply to a {cls.kind} task"
                    + ("; give one label 'column'" if key == "columns" else "")
                )
        return problems

    # -- statistics
    def fit(self, table: pa.Table) -> Task:
        """Fit ``state`` to the training labels: the streaming fit with one chunk."""
        stats = self.new_stats()
        self.update_stats(stats, table)
        return self.finish_fit(stats)

    def new_stats(self) -> dict[str, Any]:
        """An empty accumulator of label statistics (``labeled``: rows with a label)."""
        return {"labeled": 0}

    def update_stats(self, stats: dict[str, Any], table: pa.Table) -> None:
        """Merge one chunk of training rows into ``stats`` (validating its labels)."""
        _, mask = self.encode(table)
        stats["labeled"] += int(_any_label(mask).sum())

    def finish_fit(self, stats: dict[str, Any]) -> Task:
        """Set ``state`` from the merged statistics; a DataError when nothing can be learned."""
        if not stats["labeled"]:
            raise DataError(
                f"task {self.name!r}: label column {self.spec.label_columns[0]!r} has no labeled rows in the training data"
            )
        self.state = {}
        return self

    def label_summary(self, labels: np.ndarray, mask: np.ndarray) -> str:
        """One phrase on a split's encoded labels, for the training plan."""
        return f"{int(_any_label(mask).sum()):,} labeled"

    # -- labels
    def encode(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Labels and mask (True where labeled) as numpy arrays."""
        raise NotImplementedError

    def targets(self, values: np.ndarray) -> torch.Tensor:
        """Encoded labels as the training target tensor."""
        return torch.as_tensor(values, dtype=torch.float32)

    def _column(self, table: pa.Table, name: str) -> pa.ChunkedArray:
        if name not in table.column_names:
            raise DataError(
                f"label column {name!r} of task {self.name!r} not found; columns: {', '.join(table.column_names[:20])}"
            )
        return table.column(name)

    def _numeric(self, table: pa.Table, name: str, hint: str = "") -> tuple[np.ndarray, np.ndarray]:
        col = self._column(table, name)
        if pa.types.is_boolean(col.type):
            col = pc.cast(col, pa.float64())
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_null(col.type)
        ):
            raise DataError(
                f"label column {name!r} of task {self.name!r} must be numeric for a {self.kind} task; got {col.type}{hint}"
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

    # -- inference
    def predict(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, pred: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    # -- prediction columns
    def output_schema(self) -> list[pa.Field]:
        """The Arrow fields of the prediction columns ``to_arrow`` returns, in order."""
        return [pa.field(self.name, pa.float64())]

    def to_arrow(self, pred: np.ndarray) -> dict[str, pa.Array]:
        """Prediction columns by name, typed as ``output_schema`` says."""
        return {self.name: pa.array(pred.astype(np.float64), type=pa.float64())}

    def describe_output(self) -> dict[str, Any]:
        """The metadata endpoint's entry: name, kind and ``output`` (column → what it holds)."""
        return {"name": self.name, "kind": self.kind, "output": {self.name: "predicted value"}}

    # -- example for the contract tests
    @classmethod
    def example_spec(cls) -> dict[str, Any]:
        """A TaskSpec as a dict whose labels ``example_table`` holds."""
        raise NotImplementedError(f"{cls.__name__} gives no example_spec")

    @classmethod
    def example_table(cls, n: int, seed: int) -> pa.Table:
        """``n`` rows of the label column(s), every class present, row 0 without a label."""
        raise NotImplementedError(f"{cls.__name__} gives no example_table")


def _any_label(mask: np.ndarray) -> np.ndarray:
    """Rows with at least one label (a multi-label mask is [rows, labels])."""
    return mask if mask.ndim == 1 else mask.any(axis=1)


def seen_values(values: set[Any], limit: int) -> str:
    """Distinct label values as a short, sorted, quoted list for an error message."""
    ordered = sorted(values, key=lambda v: (str(type(v)), v))
    shown = ", ".join(repr(v) for v in ordered[:limit])
    return shown + (", ..." if len(ordered) > limit else "") if ordered else "none"
