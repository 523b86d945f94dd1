"""Where rows come from: the ``SOURCES`` registry, and reading splits through it.

A :class:`Source` knows its schema without reading all rows, yields Arrow record
batches and reads a whole table. Registered: ``files`` (Parquet or CSV files,
directories, globs), ``frame`` (a pandas DataFrame or pyarrow Table in memory) and
``spark`` (a Spark DataFrame); a user's own by import path (``data.source =
"pkg.mod:MySource"``). :func:`read_table`, :func:`iter_batches` and
:func:`load_splits` take a path or any object a source accepts. Every problem the
user can fix (no such file, a corrupt file, a missing column, no rows, a CSV that is
not UTF-8) is a :class:`~hydranet.errors.DataError` whose one-line message names the
file or column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa

from hydranet.data.datasets import DATASETS, data_dir
from hydranet.data.sources import frame, spark  # noqa: F401  (imported to register)
from hydranet.data.sources.base import SOURCES, Source, open_source, source_class
from hydranet.data.sources.base import first_line as _first_line  # noqa: F401  (stream.py)
from hydranet.data.sources.files import FileSource
from hydranet.errors import DataError, UserError
from hydranet.spec_tables import DataSpec, FeatureGroupSpec, SourceOptions

__all__ = [
    "SOURCES",
    "FileSource",
    "Source",
    "iter_batches",
    "load_splits",
    "open_source",
    "read_table",
    "dataset_features",
    "resolve_dataset",
    "source_class",
]
_SPLITS = ("train", "validation", "test")


def _source(source: Any, format: str, data: DataSpec | None) -> Source:
    if isinstance(source, Source):
        return source
    options = data if data is not None else SourceOptions()
    if format != options.format and format != "auto":
        # not validated: an unknown format is the files source's one-line DataError
        options = options.model_copy(update={"format": format})
    return open_source(source, options)


def read_table(
    source: Any,
    format: str = "auto",
    columns: list[str] | None = None,
    *,
    data: DataSpec | None = None,
) -> pa.Table:
    """All rows of a path, frame or :class:`Source` as one table (only ``columns`` if given).

    ``data`` gives the source and the CSV options (``data.source``, ``data.csv``).
    """
    src = _source(source, format, data)
    table = src.table(columns)
    if table.num_rows == 0:
        raise DataError(f"{src.name} has no rows")
    return table


def iter_batches(
    source: Any,
    format: str = "auto",
    columns: list[str] | None = None,
    batch_rows: int = 65_536,
    *,
    data: DataSpec | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows, read lazily in bounded memory.

    The path and the columns are checked now; read errors surface during iteration.
    """
    src = _source(source, format, data)
    return _counted(src.batches(columns, batch_rows), src.name)


def _counted(batches: Iterator[pa.RecordBatch], name: str) -> Iterator[pa.RecordBatch]:
    rows = 0
    for batch in batches:
        if batch.num_rows:
            rows += batch.num_rows
            yield batch
    if rows == 0:
        raise DataError(f"{name} has no rows")


@overload
def load_splits(
    data: DataSpec,
    columns: list[str],
    *,
    inputs: Mapping[str, Any] | None = ...,
    with_rows: Literal[False] = ...,
) -> dict[str, pa.Table]: ...
@overload
def load_splits(
    data: DataSpec,
    columns: list[str],
    *,
    inputs: Mapping[str, Any] | None = ...,
    with_rows: Literal[True],
) -> tuple[dict[str, pa.Table], dict[str, np.ndarray]]: ...
def load_splits(data, columns, *, inputs=None, with_rows=False):
    """'train', 'validation' and 'test' tables; a split is absent when neither a file nor a fraction gives it.

    A split without its own data is carved out of train by ``validation_fraction`` /
    ``test_fraction`` with a permutation seeded by ``split_seed``. ``inputs`` gives a
    split's rows as an object (a DataFrame, a Table) in place of the path in ``data``.
    With ``with_rows``, also the row numbers (int64, in the training table's order)
    each split drawn from the training table holds: ``train.take(rows[s])`` is split
    ``s``; empty when nothing was carved.
    """
    data = resolve_dataset(data)
    inputs = dict(inputs or {})
    unknown = sorted(set(inputs) - set(_SPLITS))
    if unknown:
        raise UserError(f"unknown split {unknown[0]!r}; splits: {', '.join(_SPLITS)}")
    given = {s: inputs.get(s, getattr(data, s)) for s in _SPLITS}
    given = {s: v for s, v in given.items() if v is not None and not (isinstance(v, str) and not v)}
    if "train" not in given:
        raise DataError(
            "no training data: set data.train to a file, directory or glob (or data.dataset)"
        )
    columns = list(dict.fromkeys(columns))  # a column that is both feature and label is read once
    source = open_source(given["train"], data)
    train = read_table(source, columns=columns)
    out: dict[str, pa.Table] = {}
    for split in ("validation", "test"):
        if split in given:
            out[split] = read_table(given[split], columns=columns, data=data)
    fractions = {s: getattr(data, f"{s}_fraction") for s in ("validation", "test") if s not in out}
    fractions = {s: f for s, f in fractions.items() if f > 0}
    rows: dict[str, np.ndarray] = {}
    if fractions:
        train, carved, rows = _carve(train, fractions, data.split_seed, source.name)
        out.update(carved)
    out["train"] = train
    tables = {s: out[s] for s in _SPLITS if s in out}
    if with_rows:
        return tables, {s: rows[s] for s in _SPLITS if s in rows}
    return tables


def _carve(
    table: pa.Table, fractions: dict[str, float], seed: int, name: str
) -> tuple[pa.Table, dict[str, pa.Table], dict[str, np.ndarray]]:
    n = table.num_rows
    sizes = {s: max(1, round(n * f)) for s, f in fractions.items()}
    if sum(sizes.values()) >= n:
        keys = " + ".join(f"data.{s}_fraction" for s in sizes)
        raise DataError(
            f"{keys} leave no training rows out of the {n} rows of {name}; use smaller fractions"
        )
    perm = np.random.default_rng(seed).permutation(n)
    carved, rows, start = {}, {}, 0
    for split, size in sizes.items():
        # sorted indices keep the file order within a split and make `take` sequential
        rows[split] = np.sort(perm[start : start + size]).astype(np.int64)
        carved[split] = table.take(rows[split])
        start += size
    rows["train"] = np.sort(perm[start:]).astype(np.int64)
    return table.take(rows["train"]), carved, rows


def dataset_features(data: DataSpec) -> list[FeatureGroupSpec]:
    """The ``[[features]]`` groups ``data.dataset`` brings by default (image, text), if any."""
    if not data.dataset:
        return []
    return [FeatureGroupSpec(**g) for g in DATASETS.get(data.dataset).features]


def resolve_dataset(data: DataSpec) -> DataSpec:
    """A copy with paths and feature columns not given filled in from ``data.dataset``.

    The bundled files are only built (downloaded, generated) when a path is missing.
    """
    if not data.dataset:
        return data
    entry = DATASETS.get(data.dataset)
    update: dict[str, object] = {}
    if any(getattr(data, s) is None for s in _SPLITS):
        paths = entry.prepare(data_dir(), data.params)
        update.update({s: str(p) for s, p in paths.items() if getattr(data, s) is None})
    numeric, categorical = entry.feature_columns(data.params)
    if not data.numeric and not data.categorical:
        # the user's own feature list replaces the defaults entirely, never half of them
        update.update(numeric=numeric, categorical=categorical)
    return data.model_copy(update=update)
