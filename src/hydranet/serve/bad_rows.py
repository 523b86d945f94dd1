"""Rows that cannot be predicted: found, counted, and refused or marked.

Batch predict (:mod:`hydranet.serve.batch`) and :meth:`hydranet.Run.predict` share
:func:`predict_rows`: the values are checked by the server's rules
(:class:`~hydranet.serve.validate.TableCheck`), a non-finite prediction is never passed
on as a number, and each bad row is either reported (``"refuse"``) or written with null
predictions and its reason (``"mark"``). This module imports neither the run nor the
predictor, so both can use it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.serve.problems import MAX_PROBLEMS
from hydranet.serve.validate import TableCheck
from hydranet.tasks import Task

__all__ = ["BAD_ROWS", "ERROR_COLUMN", "BadRows", "output_columns", "predict_rows"]

BAD_ROWS = ("refuse", "mark")
ERROR_COLUMN = "error"  # with bad_rows="mark": why a row has no predictions (null when it has)
Forward = Callable[[dict[str, torch.Tensor]], dict[str, np.ndarray]]


class BadRows:
    """The input rows that cannot be predicted: all counted, the first ten kept with why."""

    def __init__(self):
        self.count = 0
        self.first: list[tuple[int, str]] = []  # (1-based data row, reason)

    def add(self, row: int, reason: str) -> None:
        self.count += 1
        if len(self.first) < MAX_PROBLEMS:
            self.first.append((row, reason))

    def message(self, where: str, rows: int, hint: str) -> str:
        """One line: how many rows of ``where`` cannot be predicted, which, and why the first."""
        numbers = ", ".join(str(r) for r, _ in self.first)
        more = ", ..." if self.count > len(self.first) else ""
        row, reason = self.first[0]
        return (
            f"{where}: {self.count:,} of {rows:,} rows cannot be predicted "
            f"(row{'s' if self.count > 1 else ''} {numbers}{more}); "
            f"row {row}: {reason}; {hint}"
        )


def output_columns(tasks: list[Task], bad_rows: str = "refuse") -> list[pa.Field]:
    """The prediction columns, in order (and the error column when bad rows are marked)."""
    fields = [f for t in tasks for f in t.output_schema()]
    if bad_rows == "mark":
        fields.append(pa.field(ERROR_COLUMN, pa.string()))
    return fields


def checked_outputs(
    table: pa.Table | pa.RecordBatch,
    check: TableCheck,
    forward: Forward,
    tasks: list[Task],
    batch_rows: int = 65_536,
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Every row's raw outputs per task, and why each bad row (0-based) is bad: a value the
    server would refuse, or a prediction that is not finite (the first reason per row)."""
    n = table.num_rows
    features, cells = check.features(table)
    parts = [
        forward({g: x[s : s + batch_rows] for g, x in features.items()})
        for s in range(0, n, batch_rows)
    ]
    outputs = {t.name: np.concatenate([p[t.name] for p in parts]) for t in tasks}
    reasons: dict[int, str] = {}
    for r, column, message in cells:
        reasons.setdefault(r, f"column {column!r}: {message}")
    for t in tasks:
        values = outputs[t.name].reshape(n, -1)
        for r in np.flatnonzero(~np.isfinite(values).all(axis=1)).tolist():
            bad = values[r][~np.isfinite(values[r])][0]
            reasons.setdefault(r, f"task {t.name!r} predicts {bad!s} (not a finite number)")
    return outputs, reasons


def predict_rows(
    table: pa.Table | pa.RecordBatch,
    check: TableCheck,
    forward: Forward,
    tasks: list[Task],
    bad_rows: str,
    found: BadRows,
    first_row: int = 0,
    batch_rows: int = 65_536,
) -> pa.Table:
    """Per-task prediction columns for every row of ``table`` (its schema checked before).

    A row that the server would refuse (a value beyond the model's range, text that is not
    a number) or whose prediction is not finite goes to ``found``, numbered from
    ``first_row + 1``; with ``bad_rows="mark"`` its predictions are null and the error
    column says why, else (``"refuse"``) the caller refuses the input once it has counted.
    """
    n = table.num_rows
    if n == 0:
        return pa.schema(output_columns(tasks, bad_rows)).empty_table()
    outputs, reasons = checked_outputs(table, check, forward, tasks, batch_rows)
    for r in sorted(reasons):
        found.add(first_row + r + 1, reasons[r])
    cols: dict[str, pa.Array] = {}
    for t in tasks:
        cols.update(t.to_arrow(outputs[t.name]))
    if bad_rows == "mark":
        marked = np.zeros(n, dtype=bool)
        marked[list(reasons)] = True
        if reasons:
            mask = pa.array(marked)
            cols = {k: pc.if_else(mask, pa.scalar(None, c.type), c) for k, c in cols.items()}
        cols[ERROR_COLUMN] = pa.array([reasons.get(r) for r in range(n)], pa.string())
    return pa.table(cols)
