"""The fitted feature transforms of a run: one :class:`~hydranet.features.FeatureGroup` per group.

The Preprocessor holds the run's feature groups in order. It is fitted in one
streaming pass (``partial_fit`` per record batch, then ``finish``), so the training
data never has to fit in memory, and ``transform`` turns an Arrow table into the
batch format's features: ``{group name: tensor}``. Before anything is read, every
group checks the schema and every problem is reported at once, one line each
(two missing columns are two lines). It is saved as JSON, never pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch

from hydranet.errors import DataError, column_report
from hydranet.features import FEATURES, CategoricalGroup, FeatureGroup, NumericGroup
from hydranet.features.categorical import MISSING, OOV

if TYPE_CHECKING:
    from hydranet.spec_tables import FeatureGroupSpec

__all__ = ["MISSING", "OOV", "Preprocessor"]

_FORMAT_VERSION = 2

Columnar = pa.Table | pa.RecordBatch


class Preprocessor:
    """The feature groups of a run, fitted together; ``transform(table) -> {group: tensor}``."""

    def __init__(self, groups: Sequence[FeatureGroup]):
        self.groups: dict[str, FeatureGroup] = {}
        for g in groups:
            if g.name in self.groups:
                raise DataError(f"feature group {g.name!r} is defined twice")
            self.groups[g.name] = g
        if not self.groups:
            raise DataError("no feature groups: list numeric and/or categorical columns")
        self.n_rows_seen_ = 0
        self._rows = 0
        self._checked = False

    @classmethod
    def from_specs(cls, specs: Sequence[FeatureGroupSpec]) -> Preprocessor:
        """Unfitted groups from resolved ``[[features]]`` specs (columns already explicit)."""
        return cls([FEATURES.get(s.kind)(s.name, list(s.columns), **s.params) for s in specs])

    @classmethod
    def tabular(
        cls,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        log1p: Sequence[str] = (),
        min_count: int = 1,
    ) -> Preprocessor:
        """The ``data.numeric`` / ``data.categorical`` shortcut: groups 'categorical' then 'numeric'."""
        both = [c for c in numeric if c in categorical]
        if both:
            raise DataError(
                f"column {both[0]!r} is listed as both numeric and categorical; keep one"
            )
        groups: list[FeatureGroup] = []
        if categorical:
            groups.append(CategoricalGroup("categorical", categorical, min_count=min_count))
        if numeric:
            groups.append(NumericGroup("numeric", numeric, log1p=log1p))
        elif log1p:
            raise DataError(f"log1p column {list(log1p)[0]!r} is not a numeric feature")
        return cls(groups)

    # ------------------------------------------------------------ views
    @property
    def columns(self) -> list[str]:
        """Every feature column, in group order, each once."""
        return list(dict.fromkeys(c for g in self.groups.values() for c in g.columns))

    @property
    def feature_names_out(self) -> list[str]:
        return [n for g in self.groups.values() for n in g.names_out]

    def info(self) -> dict[str, dict[str, Any]]:
        """Per group: its kind and what its encoder needs (widths, vocabulary sizes)."""
        return {name: {"kind": g.kind, **g.info()} for name, g in self.groups.items()}

    def of_kind(self, kind: str) -> list[FeatureGroup]:
        return [g for g in self.groups.values() if g.kind == kind]

    @property
    def is_fitted(self) -> bool:
        return all(g.is_fitted for g in self.groups.values())

    # ------------------------------------------------------------ checks
    def problems(self, schema: pa.Schema, where: str) -> list[str]:
        return [p for g in self.groups.values() for p in g.problems(schema, where)]

    def check(self, schema: pa.Schema, where: str) -> None:
        """A DataError listing every missing or unusable feature column, one per line."""
        problems = self.problems(schema, where)
        if problems:
            raise DataError(column_report(problems, schema.names, f"the {where}"))

    # ------------------------------------------------------------ fitting
    def fit(self, table: Columnar) -> Preprocessor:
        """Fit on one table: ``partial_fit`` then ``finish``."""
        return self.partial_fit(table).finish()

    def partial_fit(self, batch: Columnar) -> Preprocessor:
        """Accumulate statistics from one record batch (or table) of training rows."""
        if not self._checked:
            self.check(batch.schema, "training data")
            self._checked = True
        for g in self.groups.values():
            g.partial_fit(batch)
        self._rows += batch.num_rows
        return self

    def finish(self) -> Preprocessor:
        """Turn the accumulated statistics into the fitted state; a later ``partial_fit``
        starts a new fit."""
        for g in self.groups.values():
            g.finish()
        self._checked = False
        self.n_rows_seen_, self._rows = self._rows, 0
        return self

    # ------------------------------------------------------------ transform
    def transform(self, table: Columnar) -> dict[str, torch.Tensor]:
        """``{group name: tensor}`` for every row of ``table``, each tensor contiguous."""
        self._require_fitted()
        self.check(table.schema, "input")
        return {name: g.transform(table) for name, g in self.groups.items()}

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
            "n_rows_seen_": self.n_rows_seen_,
            "groups": [g.to_dict() for g in self.groups.values()],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        version = state.get("format_version")
        if version == 1:
            state = _upgrade_v1(state)
        elif version != _FORMAT_VERSION:
            raise DataError(
                f"preprocessor format version {version!r} is not supported (expected {_FORMAT_VERSION})"
            )
        try:
            pre = cls([FeatureGroup.from_dict(g) for g in state["groups"]])
        except (KeyError, TypeError) as e:
            raise DataError(f"preprocessor state is incomplete: missing {e}") from None
        pre.n_rows_seen_ = int(state["n_rows_seen_"])
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
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"preprocessor file {path} is not valid JSON: {e}") from None
        return cls.from_dict(state)

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        groups = ", ".join(f"{n}: {g.kind} x{len(g.columns)}" for n, g in self.groups.items())
        return f"Preprocessor({groups}; {state})"


def _upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 preprocessor (numeric + categorical, before feature groups) as groups."""
    groups = []
    if state["categorical"]:
        groups.append(
            {
                "name": "categorical",
                "kind": "categorical",
                "columns": state["categorical"],
                "params": {"min_count": state["min_count"]},
                "fitted": {"vocabularies_": state["vocabularies_"]},
            }
        )
    if state["numeric"]:
        groups.append(
            {
                "name": "numeric",
                "kind": "numeric",
                "columns": state["numeric"],
                "params": {"log1p": state["log1p"]},
                "fitted": {k: state[k] for k in ("mean_", "scale_", "missing_indicator_")},
            }
        )
    return {
        "format_version": _FORMAT_VERSION,
        "n_rows_seen_": state["n_rows_seen_"],
        "groups": groups,
    }
