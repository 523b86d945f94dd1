"""Numeric feature group: optional signed log1p, standard scaling, mean imputation.

A value becomes ``(x - mean_) / scale_`` after an optional ``sign(x)·log1p(|x|)``;
a missing value (null, NaN or ±inf) becomes 0 (the fitted mean), and every column
that had a missing value in train also gets an is-missing 0/1 indicator column.
Moments are merged batch by batch with Chan's parallel formula, so the fit streams.
The tensor is ``[N, len(names_out)]`` float32: scaled values, then the indicators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hydranet.errors import DataError
from hydranet.features.base import FEATURES, Columnar, FeatureGroup, float_values


def _is_numeric(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
    )


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@FEATURES.register("numeric")
class NumericGroup(FeatureGroup):
    kind = "numeric"
    default_encoder = "identity"
    param_constraints = {"log1p": list[str]}

    def __init__(self, name: str, columns: Sequence[str], log1p: Sequence[str] = ()):
        super().__init__(name, columns)
        self.log1p = list(log1p)
        stray = [c for c in self.log1p if c not in self.columns]
        if stray:
            raise DataError(
                f"log1p column {stray[0]!r} is not in the numeric group {name!r}; list it among its columns"
            )
        self._reset()

    def params(self) -> dict[str, Any]:
        return {"log1p": self.log1p}

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        if _is_numeric(type_):
            return None
        return f"has type {type_}; make it categorical or fix its values"

    # ------------------------------------------------------------ fitting
    def _reset(self) -> None:
        k = len(self.columns)
        self._n = np.zeros(k)
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self._missing = np.zeros(k, dtype=bool)

    def partial_fit(self, batch: Columnar) -> NumericGroup:
        for j, name in enumerate(self.columns):
            x, miss = self._values(batch, name)
            valid = x[~miss]
            n_b = valid.size
            big = np.abs(valid) > _FLOAT32_MAX
            if big.any():
                # the model computes in float32: such a value would become inf once scaled and
                # its row's predictions NaN (predict and the server refuse it the same way)
                raise DataError(
                    f"numeric column {name!r} has {int(big.sum()):,} value(s) beyond float32's "
                    f"range (e.g. {float(valid[big][0]):g}); fix them, or list the column under "
                    "log1p"
                )
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
        return self

    def finish(self) -> NumericGroup:
        self.mean_ = self._mean.tolist()
        std = np.sqrt(np.divide(self._m2, self._n, out=np.zeros_like(self._m2), where=self._n > 0))
        # a constant column is centred, not divided by 0
        self.scale_ = np.where(std > 0, std, 1.0).tolist()
        self.missing_indicator_ = self._missing.tolist()
        self._reset()
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "mean_")

    # ------------------------------------------------------------ use
    @property
    def names_out(self) -> list[str]:
        """Scaled values, then one ``<column>__missing`` indicator per flagged column."""
        self._require_fitted()
        flagged = [c for c, m in zip(self.columns, self.missing_indicator_, strict=True) if m]
        return self.columns + [f"{c}__missing" for c in flagged]

    def info(self) -> dict[str, Any]:
        self._require_fitted()
        return {"width": len(self.names_out), "n_values": len(self.columns)}

    def transform(self, table: Columnar) -> torch.Tensor:
        self._require_fitted()
        n = table.num_rows
        # filled feature-major (each column a contiguous row), transposed once at the end
        out = np.empty((len(self.names_out), n), dtype=np.float32)
        flag = len(self.columns)
        for j, name in enumerate(self.columns):
            x, miss = self._values(table, name)
            x -= self.mean_[j]
            x /= self.scale_[j]
            x[miss] = 0.0
            big = np.abs(x) > _FLOAT32_MAX
            if big.any():
                # would be inf in float32 and its row's predictions NaN: the row encoders that
                # predict and the server use refuse it too
                r = int(np.flatnonzero(big)[0])
                raise DataError(
                    f"numeric column {name!r} has {int(big.sum()):,} value(s) too large for the "
                    f"model once scaled (row {r + 1}: {float(x[r] * self.scale_[j] + self.mean_[j]):g})"
                )
            out[j] = x
            if self.missing_indicator_[j]:
                out[flag] = miss
                flag += 1
        return torch.from_numpy(out).T.contiguous()

    def _values(self, table: Columnar, name: str) -> tuple[np.ndarray, np.ndarray]:
        """float64 values after log1p, and the missing mask (null or NaN); an infinite value is
        a DataError."""
        col = table.column(name)
        why = self.column_problem(name, col.type)
        if why:
            raise DataError(f"numeric column {name!r} {why}")
        x = float_values(col)
        n_inf = int(np.isinf(x).sum())
        if n_inf:
            # predict and the server refuse an infinite value; training taking it as missing
            # would learn from rows the served model can never be asked about
            raise DataError(
                f"numeric column {name!r} has {n_inf:,} infinite value(s); replace them with "
                "null (missing) or a finite value"
            )
        if name in self.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        return x, ~np.isfinite(x)

    # ------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, Any]:
        return {
            "mean_": self.mean_,
            "scale_": self.scale_,
            "missing_indicator_": self.missing_indicator_,
        }

    def load_fitted(self, state: dict[str, Any]) -> None:
        self.mean_ = [float(v) for v in state["mean_"]]
        self.scale_ = [float(v) for v in state["scale_"]]
        self.missing_indicator_ = [bool(v) for v in state["missing_indicator_"]]

    @classmethod
    def example_table(cls, n: int, seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        a = rng.normal(size=n)
        a[0] = np.nan
        b = rng.exponential(size=n) * 100
        return pa.table({"a": a, "b": b}), {"log1p": ["b"]}
