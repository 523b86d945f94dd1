"""Fitted feature transforms: numeric scaling and imputation, categorical vocabularies.

The Preprocessor is fitted in one streaming pass (``partial_fit`` per record
batch, then ``finish``), so the training data never has to fit in memory:
numeric moments are merged with Chan's parallel formula and category counts
are merged as Arrow tables (``value_counts`` per batch, ``group_by`` sum), so
no Python runs per row or per distinct value. It is saved as JSON, never pickle.

Numeric column: optional signed log1p, ``sign(x)·log1p(|x|)``, then
``(x - mean_) / scale_``; a missing value (null, NaN or ±inf) becomes 0, the
fitted mean, and every column that had a missing value in train also gets an
is-missing 0/1 indicator. Categorical column: values cast to text; index 0 is
out-of-vocabulary, 1 is missing, 2.. the values seen ``min_count`` times or
more, most frequent first (ties by value) so the order is deterministic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import DataError

__all__ = ["Preprocessor"]

_FORMAT_VERSION = 1
OOV, MISSING = 0, 1
_RESERVED = 2  # indices before the vocabulary: out-of-vocabulary, missing

Columnar = pa.Table | pa.RecordBatch


class Preprocessor:
    """Numeric and categorical feature transforms with a scikit-learn style fit."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        log1p: Sequence[str] = (),
        min_count: int = 1,
    ):
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.log1p = list(log1p)
        self.min_count = int(min_count)
        stray = [c for c in self.log1p if c not in self.numeric]
        if stray:
            raise DataError(
                f"data.log1p: column {stray[0]!r} is not a numeric feature; list it in data.numeric"
            )
        both = [c for c in self.numeric if c in self.categorical]
        if both:
            raise DataError(
                f"column {both[0]!r} is listed as both numeric and categorical; keep one"
            )
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1; got {min_count}")
        self._reset()

    # ------------------------------------------------------------ fitting
    def _reset(self) -> None:
        k = len(self.numeric)
        self._n = np.zeros(k)
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self._missing = np.zeros(k, dtype=bool)
        self._counts: dict[str, pa.Table] = {}
        self._rows = 0

    def fit(self, table: Columnar) -> Preprocessor:
        """Fit on one table: ``partial_fit`` then ``finish``."""
        self._reset()
        return self.partial_fit(table).finish()

    def partial_fit(self, batch: Columnar) -> Preprocessor:
        """Accumulate statistics from one record batch (or table) of training rows."""
        _check_columns(batch, self.numeric + self.categorical, "training data")
        for j, name in enumerate(self.numeric):
            x, miss = self._numeric_values(batch, name)
            valid = x[~miss]
            n_b = valid.size
            self._missing[j] |= bool(miss.any())
            if n_b == 0:
                continue
            mean_b = float(valid.mean())
            m2_b = float(((valid - mean_b) ** 2).sum())
            # Chan et al.: merge (n, mean, M2) of two parts without loss of precision
            n = self._n[j]
            delta = mean_b - self._mean[j]
            total = n + n_b
            self._mean[j] += delta * n_b / total
            self._m2[j] += m2_b + delta * delta * n * n_b / total
            self._n[j] = total
        for name in self.categorical:
            counts = pc.value_counts(pc.drop_null(_as_text(batch.column(name))))
            part = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
            if name in self._counts:
                merged = (
                    pa.concat_tables([self._counts[name], part])
                    .group_by("value")
                    .aggregate([("count", "sum")])
                )
                part = pa.table({"value": merged["value"], "count": merged["count_sum"]})
            self._counts[name] = part
        self._rows += batch.num_rows
        return self

    def finish(self) -> Preprocessor:
        """Turn the accumulated statistics into the fitted attributes.

        This ends the pass: the accumulators are cleared, so a later ``partial_fit``
        starts a new fit rather than extending this one.
        """
        self.n_rows_seen_ = self._rows
        self.mean_ = self._mean.tolist()
        std = np.sqrt(np.divide(self._m2, self._n, out=np.zeros_like(self._m2), where=self._n > 0))
        # a constant column is centred, not divided by 0
        self.scale_ = np.where(std > 0, std, 1.0).tolist()
        self.missing_indicator_ = self._missing.tolist()
        self.vocabularies_: dict[str, list[str]] = {}
        for name in self.categorical:
            counts = self._counts.get(
                name,
                pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())}),
            )
            kept = counts.filter(pc.greater_equal(counts["count"], self.min_count))
            order = pc.sort_indices(
                kept, sort_keys=[("count", "descending"), ("value", "ascending")]
            )
            self.vocabularies_[name] = kept["value"].take(order).to_pylist()
        self._reset()
        self._value_sets: dict[str, pa.Array] = {}
        return self

    # ------------------------------------------------------------ fitted views
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "vocabularies_")

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column: vocabulary + out-of-vocabulary + missing."""
        self._require_fitted()
        return [len(self.vocabularies_[c]) + _RESERVED for c in self.categorical]

    @property
    def numeric_names_out(self) -> list[str]:
        """Names of the columns of the numeric tensor: scaled values, then indicators."""
        self._require_fitted()
        flagged = [c for c, m in zip(self.numeric, self.missing_indicator_, strict=True) if m]
        return self.numeric + [f"{c}__missing" for c in flagged]

    @property
    def n_numeric_out(self) -> int:
        return len(self.numeric_names_out)

    @property
    def feature_names_out(self) -> list[str]:
        """Categorical columns (the long tensor) then ``numeric_names_out`` (the float tensor)."""
        return self.categorical + self.numeric_names_out

    # ------------------------------------------------------------ transform
    def transform(self, table: Columnar) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cat [N, C] int64, num [N, n_numeric_out] float32)``, both contiguous."""
        self._require_fitted()
        _check_columns(table, self.numeric + self.categorical, "input")
        n = table.num_rows
        # both filled feature-major (each column a contiguous row), transposed once at the end
        cat = np.empty((len(self.categorical), n), dtype=np.int64)
        for j, name in enumerate(self.categorical):
            cat[j] = self._lookup(table.column(name), name)
        num = np.empty((self.n_numeric_out, n), dtype=np.float32)
        flag = len(self.numeric)
        for j, name in enumerate(self.numeric):
            x, miss = self._numeric_values(table, name)
            x -= self.mean_[j]
            x /= self.scale_[j]
            x[miss] = 0.0
            num[j] = x
            if self.missing_indicator_[j]:
                num[flag] = miss
                flag += 1
        return torch.from_numpy(cat).T.contiguous(), torch.from_numpy(num).T.contiguous()

    def _lookup(self, column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
        if name not in self._value_sets:
            self._value_sets[name] = pa.array(self.vocabularies_[name], type=pa.string())
        text = _as_text(column)
        found = pc.add(pc.index_in(text, value_set=self._value_sets[name]), _RESERVED)
        idx = pc.if_else(pc.is_null(text), MISSING, pc.fill_null(found, OOV))
        return idx.to_numpy(zero_copy_only=False)

    def _numeric_values(self, table: Columnar, name: str) -> tuple[np.ndarray, np.ndarray]:
        """float64 values after log1p, and the missing mask (null or not finite)."""
        col = table.column(name)
        t = col.type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
            or pa.types.is_null(t)
        ):
            raise DataError(
                f"numeric column {name!r} has type {t}; list it under data.categorical or fix its values"
            )
        x = pc.fill_null(pc.cast(col, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        x = np.array(x, dtype=np.float64)  # writable copy: Arrow buffers are read-only
        if name in self.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        return x, ~np.isfinite(x)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                "this Preprocessor is not fitted yet; call fit() or partial_fit() + finish()"
            )

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "format_version": _FORMAT_VERSION,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "log1p": self.log1p,
            "min_count": self.min_count,
            "n_rows_seen_": self.n_rows_seen_,
            "mean_": self.mean_,
            "scale_": self.scale_,
            "missing_indicator_": self.missing_indicator_,
            "vocabularies_": self.vocabularies_,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        version = state.get("format_version")
        if version != _FORMAT_VERSION:
            raise DataError(
                f"preprocessor format version {version!r} is not supported (expected {_FORMAT_VERSION})"
            )
        pre = cls(state["numeric"], state["categorical"], state["log1p"], state["min_count"])
        pre.n_rows_seen_ = int(state["n_rows_seen_"])
        pre.mean_ = [float(v) for v in state["mean_"]]
        pre.scale_ = [float(v) for v in state["scale_"]]
        pre.missing_indicator_ = [bool(v) for v in state["missing_indicator_"]]
        pre.vocabularies_ = {
            c: [str(v) for v in state["vocabularies_"][c]] for c in pre.categorical
        }
        pre._value_sets = {}
        return pre

    def save(self, path: str | Path) -> None:
        """Write as JSON via a temporary file, so a kill never leaves half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"preprocessor file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"preprocessor file {path} is not valid JSON: {e}") from None
        return cls.from_dict(state)

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"Preprocessor(numeric={len(self.numeric)}, categorical={len(self.categorical)}, {state})"


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    # one spelling per value whatever the source type (int codes, dictionaries, large strings)
    return column if column.type == pa.string() else pc.cast(column, pa.string())


def _check_columns(table: Columnar, names: list[str], what: str) -> None:
    have = set(table.schema.names)
    missing = [c for c in names if c not in have]
    if missing:
        shown = ", ".join(table.schema.names[:40])
        raise DataError(f"feature column {missing[0]!r} not found in the {what}; columns: {shown}")
