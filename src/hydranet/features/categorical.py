"""Categorical feature group: a vocabulary per column, values to integer indices.

Values are cast to text (one spelling whatever the source type: int codes,
dictionaries, large strings); index 0 is out-of-vocabulary, 1 is missing, 2.. the
values seen ``min_count`` times or more, most frequent first (ties by value) so
the order is deterministic. Counts are merged as Arrow tables (``value_counts``
per batch, ``group_by`` sum), so no Python runs per row or per distinct value.
The tensor is ``[N, len(columns)]`` int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from hydranet.errors import warn
from hydranet.features.base import FEATURES, Columnar, FeatureGroup
from hydranet.params import PositiveInt

OOV, MISSING = 0, 1
RESERVED = 2  # indices before the vocabulary: out-of-vocabulary, missing

# A column with more distinct values than half its rows, and over a thousand of them, is
# most likely an identifier: most values are seen once, so their embeddings barely train,
# and the vocabulary grows with the data (1M ids: a 16 MB preprocessor.json). A real
# high-cardinality feature (a zip code, a city) stays far below half; under a thousand
# values the table is small whatever the column is.
ID_LIKE_SHARE = 0.5
ID_LIKE_MIN_DISTINCT = 1000


def as_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    # one spelling per value whatever the source type (int codes, dictionaries, large strings)
    return column if column.type == pa.string() else pc.cast(column, pa.string())


@FEATURES.register("categorical")
class CategoricalGroup(FeatureGroup):
    kind = "categorical"
    default_encoder = "embedding"
    param_constraints = {"min_count": PositiveInt}

    def __init__(self, name: str, columns: Sequence[str], min_count: int = 1):
        super().__init__(name, columns)
        if int(min_count) < 1:
            raise ValueError(f"min_count must be at least 1; got {min_count}")
        self.min_count = int(min_count)
        self._counts: dict[str, pa.Table] = {}
        self._value_sets: dict[str, pa.Array] = {}

    def params(self) -> dict[str, Any]:
        return {"min_count": self.min_count}

    def column_problem(self, name: str, type_: pa.DataType) -> str | None:
        if pa.types.is_nested(type_) or pa.types.is_binary(type_):
            return f"has type {type_}, which has no text spelling for a vocabulary"
        return None

    # ------------------------------------------------------------ fitting
    def partial_fit(self, batch: Columnar) -> CategoricalGroup:
        for name in self.columns:
            counts = pc.value_counts(pc.drop_null(as_text(batch.column(name))))
            part = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
            if name in self._counts:
                merged = (
                    pa.concat_tables([self._counts[name], part])
                    .group_by("value")
                    .aggregate([("count", "sum")])
                )
                part = pa.table({"value": merged["value"], "count": merged["count_sum"]})
            self._counts[name] = part
        return self

    def finish(self) -> CategoricalGroup:
        self.vocabularies_: dict[str, list[str]] = {}
        empty = pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        for name in self.columns:
            counts = self._counts.get(name, empty)
            kept = counts.filter(pc.greater_equal(counts["count"], self.min_count))
            order = pc.sort_indices(
                kept, sort_keys=[("count", "descending"), ("value", "ascending")]
            )
            self.vocabularies_[name] = kept["value"].take(order).to_pylist()
            self._warn_if_id_like(name, counts, kept)
        self._counts = {}
        self._value_sets = {}
        return self

    def _warn_if_id_like(self, name: str, counts: pa.Table, kept: pa.Table) -> None:
        distinct, rows = counts.num_rows, int(pc.sum(counts["count"]).as_py() or 0)
        if distinct <= ID_LIKE_MIN_DISTINCT or distinct <= ID_LIKE_SHARE * rows:
            return
        # each entry is stored as a JSON string: its text, quotes, comma and space
        size = (int(pc.sum(pc.binary_length(kept["value"])).as_py() or 0) + 4 * kept.num_rows) / 1e6
        warn(
            f"categorical column {name!r} (feature group {self.name!r}) has {distinct:,} distinct values in {rows:,} training rows ({distinct / rows:.0%}), like an identifier: its vocabulary has {kept.num_rows + RESERVED:,} entries (about {size:.1f} MB in preprocessor.json) whose embeddings barely train; drop the column from the features or raise min_count (now {self.min_count})"
        )

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "vocabularies_")

    # ------------------------------------------------------------ use
    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per column: vocabulary + out-of-vocabulary + missing."""
        self._require_fitted()
        return [len(self.vocabularies_[c]) + RESERVED for c in self.columns]

    def summary(self) -> str:
        return f"vocabulary sizes {sum(self.cardinalities):,} in all"

    def info(self) -> dict[str, Any]:
        return {"cardinalities": self.cardinalities}

    def transform(self, table: Columnar) -> torch.Tensor:
        self._require_fitted()
        out = np.empty((len(self.columns), table.num_rows), dtype=np.int64)
        for j, name in enumerate(self.columns):
            out[j] = self._lookup(table.column(name), name)
        return torch.from_numpy(out).T.contiguous()

    def _lookup(self, column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
        if name not in self._value_sets:
            self._value_sets[name] = pa.array(self.vocabularies_[name], type=pa.string())
        text = as_text(column)
        found = pc.add(pc.index_in(text, value_set=self._value_sets[name]), RESERVED)
        idx = pc.if_else(pc.is_null(text), MISSING, pc.fill_null(found, OOV))
        return idx.to_numpy(zero_copy_only=False)

    # ------------------------------------------------------------ persistence
    def fitted_state(self) -> dict[str, Any]:
        return {"vocabularies_": self.vocabularies_}

    def load_fitted(self, state: dict[str, Any]) -> None:
        self.vocabularies_ = {c: [str(v) for v in state["vocabularies_"][c]] for c in self.columns}
        self._value_sets = {}

    @classmethod
    def example_table(cls, n: int, seed: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        colour = [["red", "green", "blue"][i] for i in rng.integers(0, 3, n)]
        colour[0] = None
        code = rng.integers(0, 5, n)
        return pa.table({"colour": colour, "code": code}), {"min_count": 1}
