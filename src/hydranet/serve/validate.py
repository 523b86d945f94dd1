"""Request validation for ``POST /v1/predict``: untyped JSON rows in, typed feature columns out.

The preprocessor works on typed Arrow columns; a JSON request is untyped, so
every value is first checked against its feature's kind, and every problem
becomes a :class:`RequestError` (HTTP 4xx) whose message names the row index
and the field, never a server error. The checks loop over the request's rows
once for their keys and once over the values (the usual all-good request costs
one ``set(map(type, ...))`` and one ``np.array`` for all numeric values); the
values are encoded on the way (:mod:`hydranet.serve.encode`), and the server
runs the model once per micro-batch, never per row.

What a value may be:

* numeric feature: a number, a boolean (0/1, as Arrow reads a boolean column)
  or ``null`` (missing: imputed exactly as in training). A number beyond the
  float64 range (``1e400``) is refused; so are the non-standard ``NaN`` and
  ``Infinity`` tokens (send ``null`` for a missing value).
* categorical feature: a string, a number, a boolean or ``null`` (the
  "missing" bucket). Numbers and booleans are spelt as Arrow casts them to text
  in training (``3`` → ``"3"``, ``true`` → ``"true"``), so an integer-coded
  column matches its vocabulary. A value never seen in training goes to the
  out-of-vocabulary bucket, as in training.
* anything else (an object, a list) is refused, for every feature. Every row
  must have every feature, and nothing else.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from hydranet.data.preprocess import Preprocessor
from hydranet.serve.encode import RowEncoder

__all__ = ["RequestError", "RequestSchema", "Rows", "parse_json"]

MAX_PROBLEMS = 10  # problems reported per request; the first one is the message
_NAME_CHARS = 80  # a field name echoed in a message is cut to this length


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the culprit.

    ``problems`` lists up to :data:`MAX_PROBLEMS` ``{"row", "field", "message"}``
    entries; the first one is also ``message``, ``field`` and ``row``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        row: int | None = None,
        problems: list[dict[str, Any]] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.row = status, message, field, row
        self.problems = problems or [{"row": row, "field": field, "message": message}]

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "status": self.status,
                "message": self.message,
                "field": self.field,
                "row": self.row,
                "problems": self.problems,
            }
        }


class _NonFinite:
    """Stands for a ``NaN`` / ``Infinity`` / ``-Infinity`` token, so it can be reported where it is."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token


_DECODER = json.JSONDecoder(parse_constant=_NonFinite)  # json.loads would build one per call


def parse_json(body: bytes) -> Any:
    """The request body (UTF-8 JSON) as Python objects; a :class:`RequestError` (400) when it is not that."""
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except RecursionError:
        raise RequestError(400, "body: JSON is nested too deeply", field="body") from None
    except json.JSONDecodeError as e:
        raise RequestError(
            400, f"body: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", field="body"
        ) from None
    except ValueError as e:  # not UTF-8, an integer of more than 4,300 digits
        raise RequestError(
            400, f"body: not valid JSON: {_cut(str(e), 200)}", field="body"
        ) from None


@dataclass
class Rows:
    """Validated rows, encoded: categorical indices ``[n, C]`` int64 and raw numeric values ``[n, N]`` float64 (NaN = missing)."""

    cat: np.ndarray
    raw: np.ndarray
    n: int


class RequestSchema:
    """The fields a request row must have (the run's features), and their encoding."""

    def __init__(self, preprocessor: Preprocessor):
        self.encoder = RowEncoder(preprocessor)
        self.numeric, self.categorical = self.encoder.numeric, self.encoder.categorical
        self.fields = frozenset(self.numeric) | frozenset(self.categorical)
        self._listing = ", ".join(self.numeric + self.categorical)

    def validate(self, payload: Any, max_rows: int) -> Rows:
        """Check a parsed request body ``{"rows": [{feature: value}, ...]}``; encoded rows out."""
        if not isinstance(payload, dict):
            raise RequestError(
                422,
                f'body: expected an object {{"rows": [...]}}; got {_kind(payload)}',
                field="body",
            )
        extra = [k for k in payload if k != "rows"]
        if extra:
            name = _cut(extra[0])
            raise RequestError(
                422, f"{name}: unknown field; the body has one field, 'rows'", field=name
            )
        if "rows" not in payload:
            raise RequestError(
                422, 'rows: missing; send {"rows": [{feature: value, ...}]}', field="rows"
            )
        rows = payload["rows"]
        if not isinstance(rows, list):
            raise RequestError(
                422, f"rows: expected a list of objects; got {_kind(rows)}", field="rows"
            )
        if not rows:
            raise RequestError(422, "rows: empty; send at least one row", field="rows")
        if len(rows) > max_rows:
            raise RequestError(
                413,
                f"rows: {len(rows):,} rows exceed the limit of {max_rows:,} per request; split the request",
                field="rows",
            )
        problems = _Problems()
        self._check_keys(rows, problems)
        problems.raise_if_any()
        raw = self._numeric([[r[f] for f in self.numeric] for r in rows], problems)
        texts = self._categorical([[r[f] for f in self.categorical] for r in rows], problems)
        problems.raise_if_any()
        return Rows(self.encoder.encode_categorical(texts), raw, len(rows))

    def _check_keys(self, rows: list[Any], problems: _Problems) -> None:
        expected = self.fields
        for i, row in enumerate(rows):
            if type(row) is not dict:
                problems.add(i, None, f"expected an object of feature values; got {_kind(row)}")
            elif row.keys() != expected:
                for f in sorted(expected - row.keys()):
                    problems.add(i, f, "missing feature (send null for a missing value)")
                for f in sorted(row.keys() - expected):
                    problems.add(
                        i, f, f"unknown field; the features are: {_cut(self._listing, 400)}"
                    )
            if problems.full:
                return

    def _numeric(self, values: list[list[Any]], problems: _Problems) -> np.ndarray:
        n, names = len(values), self.numeric
        types = set(map(type, itertools.chain.from_iterable(values)))
        if not types <= _NUMBER_OR_NULL:
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    if type(v) not in _NUMBER_OR_NULL:
                        problems.add(
                            i,
                            names[j],
                            f"expected a number or null for numeric feature; got {_kind(v)}",
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
            for i, j in np.argwhere(inf)[:MAX_PROBLEMS].tolist():
                problems.add(
                    i, names[j], f"{_cut(repr(values[i][j]), 40)} is out of the float64 range"
                )
        return x

    def _categorical(self, values: list[list[Any]], problems: _Problems) -> list[list[str | None]]:
        names = self.categorical
        types = set(map(type, itertools.chain.from_iterable(values)))
        if types <= _TEXT_OR_NULL:
            texts = values
        elif not types <= _SCALAR_OR_NULL:
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    if type(v) not in _SCALAR_OR_NULL:
                        problems.add(
                            i,
                            names[j],
                            f"expected a string, a number or null for categorical feature; got {_kind(v)}",
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


class _Problems:
    def __init__(self):
        self.items: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    def add(self, row: int | None, field: str | None, message: str) -> None:
        if not self.full:
            self.items.append(
                {"row": row, "field": None if field is None else _cut(field), "message": message}
            )

    def raise_if_any(self) -> None:
        if not self.items:
            return
        first = self.items[0]
        where = f"rows[{first['row']}]" if first["row"] is not None else "rows"
        if first["field"] is not None:
            where += f".{first['field']}"
        more = f" (and {len(self.items) - 1} more problem(s))" if len(self.items) > 1 else ""
        raise RequestError(
            422,
            f"{where}: {first['message']}{more}",
            field=first["field"],
            row=first["row"],
            problems=self.items,
        )


_NUMBER = {int, float, bool}
_NUMBER_OR_NULL = _NUMBER | {type(None)}
_TEXT_OR_NULL = {str, type(None)}
_SCALAR_OR_NULL = _NUMBER_OR_NULL | {str}


def _float_or_inf(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return np.inf


def _as_text(
    values: list[list[Any]], names: list[str], problems: _Problems
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
                    problems.add(i, names[j], f"{_cut(repr(v), 40)} is out of the float64 range")
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


def _kind(v: Any) -> str:
    if isinstance(v, _NonFinite):
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


def _cut(text: str, n: int = _NAME_CHARS) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
