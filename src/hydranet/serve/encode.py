"""JSON values to a feature group's tensor without an Arrow table: the serving fast path.

:meth:`Preprocessor.transform` works on Arrow columns, about six compute calls
per column with tens of microseconds of fixed cost each: some 10 ms for the 38
census features whatever the number of rows, more than everything else a
single-row request costs together. Here the same fitted state is applied by one
:class:`RowEncoder` per feature group, chosen by the group's kind in
``ROW_ENCODERS``, in three steps:

* ``check(values, problems)``, per request: the group's JSON values (rows ×
  columns), every value that the kind cannot take added to ``problems`` with its
  row and column; the usual all-good request costs one ``set(map(type, ...))``;
* ``encode_rows(checked)``, per request once every group passed: the request's
  part (categorical: one dict lookup per value; numeric: the raw float64 values);
* ``encode_batch(part)``, per micro-batch on the requests' parts concatenated:
  the group's array (numeric: signed log1p and scaling in numpy, once per batch);
  ``overflow`` names a value that this makes non-finite.

``tests/test_serve_app.py`` checks the result against ``Preprocessor.transform``
bit for bit, log1p columns, missing values and unseen categories included. A
feature kind without a row encoder here still predicts in batch (``hydranet
predict``); ``hydranet serve`` refuses to start with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.data.preprocess import MISSING, OOV
from hydranet.features import CategoricalGroup, FeatureGroup, NumericGroup
from hydranet.features.base import float_values
from hydranet.registry import Registry
from hydranet.serve.problems import Problems, cut, plain

__all__ = ["ROW_ENCODERS", "CategoricalRows", "NumericRows", "RowEncoder", "kind_of", "cut"]

_RESERVED = 2  # vocabulary indices start after out-of-vocabulary (0) and missing (1)


class RowEncoder:
    """One feature group's JSON values → the group's array, as ``group.transform`` makes it."""

    kind: ClassVar[str] = ""

    def __init__(self, group: FeatureGroup):
        self.group = group
        self.name = group.name
        self.columns = list(group.columns)

    def check(self, values: list[list[Any]], problems: Problems) -> Any:
        """The request's values of this group (one list per row, in ``columns`` order);
        each value the kind cannot take goes to ``problems``. Returns what ``encode_rows`` takes."""
        raise NotImplementedError

    def encode_rows(self, checked: Any) -> np.ndarray:
        """The request's part of the group's array (``[n, ...]``), once every check passed."""
        raise NotImplementedError

    def encode_batch(self, part: np.ndarray) -> np.ndarray:
        """The group's array for a micro-batch, from its requests' parts concatenated."""
        return part

    def overflow(self, part: np.ndarray, out: np.ndarray) -> Iterator[tuple[int, str, str]]:
        """``(row, field, message)`` for each value ``encode_batch`` could not represent."""
        return iter(())

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        """Why a typed input column (batch predict) cannot hold this group's values, or None."""
        return self.group.column_problem(name, type_)

    def encode_columns(self, table: pa.Table | pa.RecordBatch) -> tuple[torch.Tensor, list[Cell]]:
        """Batch predict's ``check`` + ``encode_rows`` + ``encode_batch`` + ``overflow``: the
        group's tensor from typed Arrow columns, and a ``(row, column, message)`` for each
        value the server would refuse (its row's output is not to be trusted)."""
        return self.group.transform(table), []


ROW_ENCODERS: Registry[type[RowEncoder]] = Registry("JSON row encoder")
Cell = tuple[int, str, str]  # (row, column, what is wrong with the value)
# text a numeric column may hold (a CSV column that Arrow read as text): a decimal number
_NUMBER_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@ROW_ENCODERS.register("numeric")
class NumericRows(RowEncoder):
    """A number, a boolean (0/1) or ``null`` (missing) per value; scaled once per micro-batch."""

    kind = "numeric"

    def __init__(self, group: NumericGroup):
        super().__init__(group)
        self._mean = np.asarray(group.mean_, dtype=np.float64)
        self._scale = np.asarray(group.scale_, dtype=np.float64)
        self._log1p = np.array([c in group.log1p for c in group.columns], dtype=bool)
        self._flagged = np.flatnonzero(np.asarray(group.missing_indicator_, dtype=bool))
        self.names_out = group.names_out

    def check(self, values: list[list[Any]], problems: Problems) -> np.ndarray:
        n, names = len(values), self.columns
        types = set(map(type, itertools.chain.from_iterable(values)))
        if not types <= _NUMBER_OR_NULL:
            _refuse_types(
                values, names, _NUMBER_OR_NULL, "a number or null for numeric feature", problems
            )
            return np.zeros((n, len(names)))
        if type(None) in types:
            values = [[np.nan if v is None else v for v in row] for row in values]
        try:
            x = np.array(values, dtype=np.float64).reshape(n, len(names))
        except OverflowError:  # an integer beyond float64
            x = np.array(
                [[_float_or_inf(v) for v in row] for row in values], dtype=np.float64
            ).reshape(n, len(names))
        inf = np.isinf(x)
        if inf.any():
            for i, j in np.argwhere(inf).tolist():
                problems.add(i, names[j], f"{plain(values[i][j])} is out of the float64 range")
        return x

    def encode_rows(self, checked: np.ndarray) -> np.ndarray:
        return checked  # raw float64, NaN = missing: scaled per micro-batch

    def encode_batch(self, part: np.ndarray) -> np.ndarray:
        """``[n, len(names_out)]`` float32 from raw ``[n, N]`` float64 values (NaN: missing).

        The same operations in the same order as ``NumericGroup.transform``: signed
        log1p, missing = not finite, ``(x - mean) / scale``, missing to 0, float32,
        then one 0/1 indicator per column that had missing values in training.
        """
        x = part.copy()
        if self._log1p.any():
            sub = x[:, self._log1p]
            x[:, self._log1p] = np.sign(sub) * np.log1p(np.abs(sub))
        miss = ~np.isfinite(x)
        x -= self._mean
        x /= self._scale
        x[miss] = 0.0
        out = np.empty((x.shape[0], x.shape[1] + self._flagged.size), dtype=np.float32)
        with np.errstate(over="ignore"):  # a finite value beyond float32: see overflow
            out[:, : x.shape[1]] = x
        out[:, x.shape[1] :] = miss[:, self._flagged]
        return out

    def overflow(self, part: np.ndarray, out: np.ndarray) -> Iterator[tuple[int, str, str]]:
        # a finite float64 can still overflow float32 once scaled (indicators never do)
        if np.isfinite(out).all():
            return
        for r, col in np.argwhere(~np.isfinite(out)).tolist():
            yield (
                r,
                self.names_out[col],
                f"{plain(part[r, col])} is too large for the model (beyond float32 once scaled)",
            )

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        if pa.types.is_string(type_) or pa.types.is_large_string(type_):
            return None  # numbers as text: each value is checked (encode_columns)
        if self.group.column_problem(name, type_) is None:
            return None
        return f"has type {type_}, but the run's numeric feature {name!r} takes numbers"

    def encode_columns(self, table: pa.Table | pa.RecordBatch) -> tuple[torch.Tensor, list[Cell]]:
        """As the server: a missing value is null (or NaN, pandas' missing); text that is not a
        number, an infinite value and a value beyond float32 once scaled are refused, and
        taken as missing here so that the other rows are predicted exactly as without them."""
        cells: list[Cell] = []
        part = np.empty((table.num_rows, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            col = table.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                ok = pc.fill_null(pc.match_substring_regex(col, _NUMBER_TEXT), True)
                x = float_values(
                    pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(col), None), pa.float64())
                )
                bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
                texts = col.take(pa.array(bad)).to_pylist() if bad.size else []
                cells += [
                    (r, name, f"{plain(t)} is not a number")
                    for r, t in zip(bad.tolist(), texts, strict=True)
                ]
            else:
                x = float_values(col)
            inf = np.isinf(x)
            if inf.any():
                cells += [
                    (r, name, f"{plain(x[r])} is not a finite number")
                    for r in np.flatnonzero(inf).tolist()
                ]
                x[inf] = np.nan
            part[:, j] = x
        out = self.encode_batch(part)
        for r, name, message in self.overflow(part, out):
            cells.append((r, name, message))
        if cells:
            out[~np.isfinite(out)] = 0.0  # refused: the row's predictions are dropped
        return torch.from_numpy(out), cells


@ROW_ENCODERS.register("categorical")
class CategoricalRows(RowEncoder):
    """A string, a number, a boolean or ``null`` (missing) per value; looked up per request.

    Numbers and booleans are spelt as Arrow casts them to text in training
    (``3`` → ``"3"``, ``true`` → ``"true"``), so an integer-coded column matches
    its vocabulary; a value never seen in training is out-of-vocabulary.
    """

    kind = "categorical"

    def __init__(self, group: CategoricalGroup):
        super().__init__(group)
        self._lookups = [
            {v: i + _RESERVED for i, v in enumerate(group.vocabularies_[c])} for c in self.columns
        ]

    def check(self, values: list[list[Any]], problems: Problems) -> list[list[str | None]]:
        names = self.columns
        types = set(map(type, itertools.chain.from_iterable(values)))
        if types <= _TEXT_OR_NULL:
            texts = values
        elif not types <= _SCALAR_OR_NULL:
            _refuse_types(
                values,
                names,
                _SCALAR_OR_NULL,
                "a string, a number or null for categorical feature",
                problems,
            )
            return []
        else:
            texts = _as_text(values, names, problems)
        try:
            # one C call proves every string is encodable; JSON allows lone surrogates, Arrow and UTF-8 do not
            "".join(s for row in texts for s in row if s is not None).encode("utf-8")
        except UnicodeEncodeError:
            for i, row in enumerate(texts):
                for j, s in enumerate(row):
                    if s is not None and not _encodable(s):
                        problems.add(i, names[j], "string is not valid Unicode (a lone surrogate)")
        return texts

    def encode_rows(self, texts: list[list[str | None]]) -> np.ndarray:
        """``[n, C]`` int64 indices from rows of category texts (``None``: missing)."""
        lookups = self._lookups
        codes = [
            [MISSING if t is None else lk.get(t, OOV) for t, lk in zip(row, lookups, strict=True)]
            for row in texts
        ]
        return np.array(codes, dtype=np.int64).reshape(len(texts), len(lookups))


_NUMBER = {int, float, bool}
_NUMBER_OR_NULL = _NUMBER | {type(None)}
_TEXT_OR_NULL = {str, type(None)}
_SCALAR_OR_NULL = _NUMBER_OR_NULL | {str}


def _refuse_types(
    values: list[list[Any]], names: list[str], allowed: set[type], expected: str, problems: Problems
) -> None:
    """A problem for every value whose type is not in ``allowed`` (the slow path: the request
    is refused, so each culprit is named with its row and field)."""
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if type(v) not in allowed:
                problems.add(i, names[j], f"expected {expected}; got {kind_of(v)}")


def _float_or_inf(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return np.inf


def _as_text(
    values: list[list[Any]], names: list[str], problems: Problems
) -> list[list[str | None]]:
    """Numbers and booleans spelt as Arrow's cast to string spells them (training did that cast)."""
    texts = [list(row) for row in values]
    floats: list[tuple[int, int]] = []
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            t = type(v)
            if t is bool:
                texts[i][j] = "true" if v else "false"
            elif t is int:
                texts[i][j] = str(v)
            elif t is float:
                if v != v or v in (np.inf, -np.inf):
                    problems.add(i, names[j], f"{plain(v)} is out of the float64 range")
                else:
                    floats.append((i, j))
    if floats:
        spelt = (
            pa.array([values[i][j] for i, j in floats], pa.float64()).cast(pa.string()).to_pylist()
        )
        for (i, j), s in zip(floats, spelt, strict=True):
            texts[i][j] = s
    return texts


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class NonFinite:
    """Stands for a ``NaN`` / ``Infinity`` / ``-Infinity`` token, so it can be reported where it is."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token


def kind_of(v: Any) -> str:
    """What a JSON value is, for a message (``a string``, ``an object``, ...)."""
    if isinstance(v, NonFinite):
        return f"{v.token}, which is not valid JSON (send null for a missing value)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__  # pragma: no cover - json.loads gives nothing else
