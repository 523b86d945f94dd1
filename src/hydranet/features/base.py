"""The feature-group interface and its registry.

A feature group is a named set of columns of one kind that becomes ONE contiguous
tensor in every batch (``Batch.features[group.name]``), and the input of one encoder
(:mod:`hydranet.models.encoders`). A kind is one class registered in ``FEATURES``:

* ``partial_fit(batch)`` per Arrow record batch, then ``finish()``: the fitted
  statistics (streaming, so the training data never has to fit in memory);
* ``transform(table) -> torch.Tensor``: Arrow columns to the group's tensor, with
  Arrow/numpy kernels over whole columns (no Python per row);
* ``fitted_state()`` / ``load_fitted(state)``: the fitted statistics as JSON (never pickle);
* ``problems(schema)``: every missing or wrongly typed column, one line each, so that
  data checks report all of them at once;
* ``info()``: what an encoder needs to know of the fitted group (a width, vocabulary sizes);
* ``default_encoder``: the encoder used when ``model.encoders`` names none for the group.

A new kind (image paths, token ids, a fixed-length embedding column) is one file with
one such class and ``@FEATURES.register("name")``; ``tests/test_feature_contract.py``
checks every registered kind with its ``example_table``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from hydranet.errors import DataError
from hydranet.params import DeclaredParams
from hydranet.registry import Registry

__all__ = ["FEATURES", "FeatureGroup"]

Columnar = pa.Table | pa.RecordBatch


class FeatureGroup(DeclaredParams):
    """Columns of one kind, fitted on the training rows, transformed into one tensor."""

    kind: ClassVar[str] = ""
    default_encoder: ClassVar[str] = ""

    def __init__(self, name: str, columns: Sequence[str]):
        self.name = name
        self.columns = list(columns)
        if not self.columns:
            raise DataError(f"feature group {name!r} has no columns")

    # ------------------------------------------------------------ parameters
    def params(self) -> dict[str, Any]:
        """The constructor's parameters beyond name and columns (saved with the fit)."""
        return {}

    # ------------------------------------------------------------ checks
    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        """Why column ``name`` of type ``type_`` cannot be in this group, or None."""
        return None

    def problems(self, schema: pa.Schema, where: str) -> list[str]:
        """Every missing or unusable column of this group in ``schema``, one line each."""
        out = []
        for c in self.columns:
            if c not in schema.names:
                out.append(f"feature column {c!r} (group {self.name!r}) not found in the {where}")
                continue
            why = self.column_problem(c, schema.field(c).type)
            if why:
                out.append(f"feature column {c!r} (group {self.name!r}) {why}")
        return out

    # ------------------------------------------------------------ fitting
    def partial_fit(self, batch: Columnar) -> FeatureGroup:
        raise NotImplementedError

    def finish(self) -> FeatureGroup:
        raise NotImplementedError

    def fit(self, table: Columnar) -> FeatureGroup:
        return self.partial_fit(table).finish()

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f"feature group {self.name!r} is not fitted yet; call fit() or partial_fit() + finish()"
            )

    # ------------------------------------------------------------ use
    def transform(self, table: Columnar) -> torch.Tensor:
        """The group's tensor for every row of ``table``: ``[N, ...]``, contiguous."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What an encoder needs of the fitted group (JSON-able)."""
        raise NotImplementedError

    def summary(self) -> str:
        """A few words on the fitted group beyond its columns, for ``hydranet plan``."""
        return ""

    @property
    def names_out(self) -> list[str]:
        """A name per column of the group's tensor."""
        return list(self.columns)

    # ------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_fitted(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "name": self.name,
            "kind": self.kind,
            "columns": self.columns,
            "params": self.params(),
            "fitted": self.fitted_state(),
        }

    @staticmethod
    def from_dict(state: dict[str, Any]) -> FeatureGroup:
        cls = FEATURES.get(state["kind"])
        group = cls(state["name"], state["columns"], **state.get("params", {}))
        group.load_fitted(state["fitted"])
        return group

    # ------------------------------------------------------------ contract tests
    @classmethod
    def example_table(cls, n: int, seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        """A small table this kind can fit (with a missing value), and the group's params."""
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({self.name!r}, {len(self.columns)} columns, {state})"


FEATURES: Registry[type[FeatureGroup]] = Registry("feature kind")


def float_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A writable float64 copy of a numeric column, null as NaN."""
    import pyarrow.compute as pc

    x = pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    return np.array(x, dtype=np.float64)
