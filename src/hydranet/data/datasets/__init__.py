"""Bundled datasets, named by ``data.dataset`` in a Spec.

A bundled dataset knows how to produce its splits as Parquet files under
:func:`data_dir` (download or generate once, then reuse the cache) and which
columns are its default features (numeric and categorical columns, and groups of other kinds), so a Spec can say
``dataset = "census"`` and nothing else about the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydranet.data.datasets import census, emoji, multifashion, stamps, synthetic
from hydranet.errors import UserError
from hydranet.registry import Registry

__all__ = ["DATASETS", "BundledDataset", "data_dir"]


def data_dir() -> Path:
    """Where bundled datasets are cached: ``$HYDRANET_DATA_DIR`` or ``~/.cache/hydranet``."""
    return Path(os.environ.get("HYDRANET_DATA_DIR") or "~/.cache/hydranet").expanduser()


@dataclass(frozen=True)
class BundledDataset:
    """One bundled dataset: how to build its splits and its default feature columns."""

    name: str
    description: str
    build: Callable[[Path, dict[str, Any]], dict[str, Path]]
    numeric: list[str]
    categorical: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    """Accepted ``data.params`` and their defaults."""
    constraints: dict[str, Any] = field(default_factory=dict)
    """The values each of ``params`` accepts (see :mod:`hydranet.params`), checked at Spec load."""
    columns_for: Callable[[dict[str, Any]], tuple[list[str], list[str]]] | None = None
    """Feature columns that depend on the params (e.g. the synthetic dimension)."""
    features: list[dict[str, Any]] = field(default_factory=list)
    """Default ``[[features]]`` groups of other kinds (image, text): ``name``, ``kind``,
    ``columns``, ``params``; used, beside the numeric and categorical columns, when a spec
    names no feature column of its own."""

    def prepare(self, data_dir: Path, params: dict[str, Any]) -> dict[str, Path]:
        """Split name → Parquet path, building the files on first use."""
        return self.build(Path(data_dir), self.resolve_params(params))

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "(none)"
            raise UserError(
                f"data.params.{unknown[0]}: unknown parameter of dataset {self.name!r}; allowed: {allowed}"
            )
        return {**self.params, **params}

    def feature_columns(self, params: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Default (numeric, categorical) columns for these params."""
        if self.columns_for is None:
            return list(self.numeric), list(self.categorical)
        return self.columns_for(self.resolve_params(params))


DATASETS: Registry[BundledDataset] = Registry("dataset")

DATASETS.add(
    "census",
    BundledDataset(
        name="census",
        description="Census-Income (KDD) 1994-1995; tasks income (>50K) and marital (never married)",
        build=census.prepare,
        numeric=list(census.NUMERIC),
        categorical=list(census.CATEGORICAL),
    ),
)
DATASETS.add(
    "emoji",
    BundledDataset(
        name="emoji",
        description="Twemoji 64px images with names (npm emoji-datasource-twitter); tasks category, subcategory, skin_tones",
        build=emoji.prepare,
        numeric=list(emoji.NUMERIC),
        categorical=[],
        features=emoji.FEATURES,
    ),
)
DATASETS.add(
    "multifashion",
    BundledDataset(
        name="multifashion",
        description="MultiMNIST protocol on Fashion-MNIST (Debian dataset-fashion-mnist): two items overlaid; tasks left, right",
        build=multifashion.prepare,
        numeric=[],
        categorical=[],
    ),
)
DATASETS.add(
    "stamps",
    BundledDataset(
        name="stamps",
        description="Tux Paint stamps with captions (Debian tuxpaint-stamps-default); tasks category, subcategory, photo",
        build=stamps.prepare,
        numeric=list(stamps.NUMERIC),
        categorical=[],
    ),
)
DATASETS.add(
    "synthetic",
    BundledDataset(
        name="synthetic",
        description="MMoE synthetic regression pair y1, y2 with controllable task correlation",
        build=synthetic.prepare,
        numeric=synthetic.feature_names(synthetic.DEFAULTS["dim"]),
        categorical=[],
        params=dict(synthetic.DEFAULTS),
        constraints=dict(synthetic.CONSTRAINTS),
        columns_for=lambda p: (synthetic.feature_names(p["dim"]), []),
    ),
)
