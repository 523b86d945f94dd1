"""Request validation for ``POST /v1/predict``: untyped JSON rows in, typed feature columns out.

The preprocessor works on typed Arrow columns; a JSON request is untyped, so
every value is first checked against its feature group's kind, and every
problem becomes a :class:`RequestError` (HTTP 4xx) whose message names the row
index and the field, never a server error. The checks loop over the request's
rows once for their keys and then, per feature group, once over its values (the
usual all-good request costs one ``set(map(type, ...))`` per group and one
``np.array`` per numeric group); the values are encoded on the way by the
group kind's row encoder (:mod:`hydranet.serve.encode`), and the server runs
the model once per micro-batch, never per row.

What a value may be (the built-in kinds; a run with a feature group of a kind
that has no row encoder is refused at start, see :func:`check_servable`):

* numeric feature: a number, a boolean (0/1, as Arrow reads a boolean column)
  or ``null`` (missing: imputed exactly as in training). A number beyond the
  float64 range (``1e400``) is refused; so are the non-standard ``NaN`` and
  ``Infinity`` tokens (send ``null`` for a missing value).
* categorical feature: a string, a number, a boolean or ``null`` (the
  "missing" bucket). Numbers and booleans are spelt as Arrow casts them to text
  in training (``3`` → ``"3"``, ``true`` → ``"true"``), so an integer-coded
  column matches its vocabulary. A value never seen in training goes to the
  out-of-vocabulary bucket, as in training.
* text feature: a string or ``null`` (all padding), tokenized by the run's fitted
  tokenizer as in training (:mod:`hydranet.serve.encode_media`).
* image feature: a base64 string of the image file's bytes (PNG, JPEG, ...) or
  ``null``; base64 or bytes that do not decode to an image are refused.
* anything else (an object, a list) is refused, for every feature. Every row
  must have every feature, and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hydranet.data.preprocess import Preprocessor
from hydranet.errors import DataError, UserError, column_report
from hydranet.serve import encode_media  # noqa: F401  (registers the text and image row encoders)
from hydranet.serve.encode import ROW_ENCODERS, Cell, NonFinite, RowEncoder, kind_of
from hydranet.serve.problems import Problems, RequestError, cut  # noqa: F401  (RequestError: re-exported)

__all__ = [
    "Problems",
    "RequestError",
    "RequestSchema",
    "Rows",
    "TableCheck",
    "check_servable",
    "parse_json",
]

_DECODER = json.JSONDecoder(parse_constant=NonFinite)  # json.loads would build one per call


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
        raise RequestError(400, f"body: not valid JSON: {cut(str(e), 200)}", field="body") from None


@dataclass
class Rows:
    """Validated rows, encoded per feature group (``RowEncoder.encode_rows``: categorical
    indices ``[n, C]`` int64, raw numeric values ``[n, N]`` float64 with NaN = missing)."""

    parts: dict[str, np.ndarray]
    n: int


def check_servable(preprocessor: Preprocessor) -> None:
    """A one-line UserError naming the first feature group whose kind has no JSON row encoder."""
    for name, g in preprocessor.groups.items():
        if g.kind not in ROW_ENCODERS:
            raise UserError(
                f"feature group {name!r} is of kind {g.kind!r}, which has no JSON row encoder "
                f"(built-in: {', '.join(ROW_ENCODERS.names())}): 'hydranet serve' cannot take it; "
                "'hydranet predict' predicts such a run in batch"
            )


class RequestSchema:
    """The fields a request row must have (the run's feature columns), and one row encoder per group."""

    def __init__(self, preprocessor: Preprocessor):
        check_servable(preprocessor)
        self.encoders: dict[str, RowEncoder] = {
            name: ROW_ENCODERS.get(g.kind)(g) for name, g in preprocessor.groups.items()
        }
        self.columns = preprocessor.columns
        self.fields = frozenset(self.columns)
        self._listing = ", ".join(self.columns)

    def validate(self, payload: Any, max_rows: int) -> Rows:
        """Check a parsed request body ``{"rows": [{feature: value}, ...]}``; encoded rows out."""
        if not isinstance(payload, dict):
            raise RequestError(
                422,
                f'body: expected an object {{"rows": [...]}}; got {kind_of(payload)}',
                field="body",
            )
        extra = [k for k in payload if k != "rows"]
        if extra:
            name = cut(extra[0])
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
                422, f"rows: expected a list of objects; got {kind_of(rows)}", field="rows"
            )
        if not rows:
            raise RequestError(422, "rows: empty; send at least one row", field="rows")
        if len(rows) > max_rows:
            raise RequestError(
                413,
                f"rows: {len(rows):,} rows exceed the limit of {max_rows:,} per request; split the request",
                field="rows",
            )
        problems = Problems()
        self._check_keys(rows, problems)
        problems.raise_if_any()
        checked = {
            name: enc.check([[r[f] for f in enc.columns] for r in rows], problems)
            for name, enc in self.encoders.items()
        }
        problems.raise_if_any()
        parts = {name: enc.encode_rows(checked[name]) for name, enc in self.encoders.items()}
        return Rows(parts, len(rows))

    def encode_batch(self, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every group's array for a micro-batch (its requests' parts concatenated)."""
        return {name: enc.encode_batch(parts[name]) for name, enc in self.encoders.items()}

    def _check_keys(self, rows: list[Any], problems: Problems) -> None:
        expected = self.fields
        for i, row in enumerate(rows):
            if type(row) is not dict:
                problems.add(i, None, f"expected an object of feature values; got {kind_of(row)}")
            elif row.keys() != expected:
                for f in sorted(expected - row.keys()):
                    problems.add(i, f, "missing feature (send null for a missing value)")
                for f in sorted(row.keys() - expected):
                    problems.add(
                        i, f, f"unknown field; the features are: {cut(self._listing, 400)}"
                    )


class TableCheck:
    """The server's value checks on typed Arrow input: ``hydranet predict`` and ``Run.predict``.

    A file or frame is typed, so what is checked per value is what a type cannot say: a
    number too large for the model, an infinite one, text in a numeric column that is not
    a number. Each group is encoded by its kind's row encoder (``encode_columns``, bit for
    bit ``Preprocessor.transform``); a kind without one by its own ``transform``, unchecked.
    """

    def __init__(self, preprocessor: Preprocessor):
        self.preprocessor = preprocessor
        self.encoders: dict[str, RowEncoder | None] = {
            name: ROW_ENCODERS.get(g.kind)(g) if g.kind in ROW_ENCODERS else None
            for name, g in preprocessor.groups.items()
        }

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        """A DataError naming every feature column missing from ``schema`` or of a type that
        cannot hold the feature (what the input lacks, not how to edit the spec)."""
        problems = []
        for name, g in self.preprocessor.groups.items():
            enc = self.encoders[name]
            for c in g.columns:
                if c not in schema.names:
                    problems.append(f"{where}: no column {c!r} (a {g.kind} feature of the run)")
                    continue
                type_ = schema.field(c).type
                why = enc.column_problem(c, type_) if enc else g.column_problem(c, type_)
                if why:
                    problems.append(f"{where}: column {c!r} {why}")
        if problems:
            raise DataError(column_report(problems, schema.names, where))

    def features(
        self, table: pa.Table | pa.RecordBatch
    ) -> tuple[dict[str, torch.Tensor], list[Cell]]:
        """The model's input for every row, and ``(row, column, message)`` for each value the
        server would refuse (0-based rows of ``table``); call ``check_schema`` first."""
        features: dict[str, torch.Tensor] = {}
        cells: list[Cell] = []
        for name, g in self.preprocessor.groups.items():
            enc = self.encoders[name]
            if enc is None:
                features[name] = g.transform(table)
            else:
                features[name], found = enc.encode_columns(table)
                cells += found
        return features, cells
