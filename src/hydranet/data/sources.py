"""Where rows come from: Parquet or CSV files, directories and globs.

Everything goes through :mod:`pyarrow.dataset`, so a directory of part files
(hive-partitioned or not), a glob and a single file are read the same way, only
the requested columns are decoded, and :func:`iter_batches` can stream a table
larger than memory. Every problem the user can fix (no such file, a corrupt
file, a missing column, no rows) is a :class:`~hydranet.errors.DataError` whose
one-line message names the file or column.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from hydranet.data.datasets import DATASETS, data_dir
from hydranet.errors import DataError
from hydranet.spec import DataSpec

__all__ = ["iter_batches", "load_splits", "read_table", "resolve_dataset"]

_SUFFIXES = {
    "parquet": (".parquet", ".pq", ".parq"),
    "csv": (".csv", ".csv.gz", ".csv.bz2", ".csv.zst"),
}
_SPLITS = ("train", "validation", "test")


def read_table(path: str, format: str = "auto", columns: list[str] | None = None) -> pa.Table:
    """All rows of a file, directory or glob as one table (only ``columns`` if given)."""
    dataset = _open(path, format, columns)
    try:
        table = dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read {path}: {_first_line(e)}") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows")
    return table


def iter_batches(
    path: str, format: str = "auto", columns: list[str] | None = None, batch_rows: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows, read lazily in bounded memory.

    The path and the columns are checked now; read errors surface during iteration.
    """
    dataset = _open(path, format, columns)
    return _batches(dataset, path, columns, batch_rows)


def _batches(
    dataset: ds.Dataset, path: str, columns: list[str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    rows = 0
    try:
        for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
            if batch.num_rows:
                rows += batch.num_rows
                yield batch
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read {path}: {_first_line(e)}") from None
    if rows == 0:
        raise DataError(f"{path} has no rows")


def load_splits(data: DataSpec, columns: list[str]) -> dict[str, pa.Table]:
    """'train', 'validation' and 'test' tables; a split is absent when neither a file nor a fraction gives it.

    A split without its own file is carved out of train by ``validation_fraction``
    / ``test_fraction`` with a permutation seeded by ``split_seed``.
    """
    data = resolve_dataset(data)
    if not data.train:
        raise DataError(
            "no training data: set data.train to a file, directory or glob (or data.dataset)"
        )
    columns = list(dict.fromkeys(columns))  # a column that is both feature and label is read once
    train = read_table(data.train, data.format, columns)
    out: dict[str, pa.Table] = {}
    for split in ("validation", "test"):
        path = getattr(data, split)
        if path:
            out[split] = read_table(path, data.format, columns)
    fractions = {s: getattr(data, f"{s}_fraction") for s in ("validation", "test") if s not in out}
    fractions = {s: f for s, f in fractions.items() if f > 0}
    if fractions:
        train, carved = _carve(train, fractions, data.split_seed, data.train)
        out.update(carved)
    out["train"] = train
    return {s: out[s] for s in _SPLITS if s in out}


def _carve(
    table: pa.Table, fractions: dict[str, float], seed: int, path: str
) -> tuple[pa.Table, dict[str, pa.Table]]:
    n = table.num_rows
    sizes = {s: max(1, round(n * f)) for s, f in fractions.items()}
    if sum(sizes.values()) >= n:
        keys = " + ".join(f"data.{s}_fraction" for s in sizes)
        raise DataError(
            f"{keys} leave no training rows out of the {n} rows of {path}; use smaller fractions"
        )
    perm = np.random.default_rng(seed).permutation(n)
    carved, start = {}, 0
    for split, size in sizes.items():
        # sorted indices keep the file order within a split and make `take` sequential
        carved[split] = table.take(np.sort(perm[start : start + size]))
        start += size
    return table.take(np.sort(perm[start:])), carved


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


# ---------------------------------------------------------------- opening
def _open(path: str, format: str, columns: list[str] | None) -> ds.Dataset:
    files, base = _files(str(path))
    fmt = _format(path, files, format)
    if format == "auto":
        # stray files (README, .crc) beside the data are not part of it
        files = [f for f in files if f.lower().endswith(_SUFFIXES[fmt])]
    try:
        if base is not None:
            dataset = ds.dataset(files, format=fmt, partitioning="hive", partition_base_dir=base)
        else:
            dataset = ds.dataset(files, format=fmt)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read {path} as {fmt}: {_first_line(e)}") from None
    missing = [c for c in columns or () if c not in dataset.schema.names]
    if missing:
        names = dataset.schema.names
        shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        raise DataError(f"column {missing[0]!r} not found in {path}; columns: {shown}")
    return dataset


def _files(path: str) -> tuple[list[str], str | None]:
    """The files a path names, and the base directory when it is a directory."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)], None
    if p.is_dir():
        # hidden and underscore files are Spark/Hadoop markers (_SUCCESS, .crc), not data
        files = sorted(
            str(f)
            for f in p.rglob("*")
            if f.is_file()
            and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
        )
        if not files:
            raise DataError(f"data directory {path} has no files")
        return files, str(p)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if files:
            return files, None
    raise DataError(f"data file not found: {path}")


def _format(path: str, files: list[str], format: str) -> str:
    if format != "auto":
        if format not in _SUFFIXES:
            raise DataError(f"unknown data format {format!r} for {path}; use auto, parquet or csv")
        return format
    found = {
        fmt for f in files for fmt, suffixes in _SUFFIXES.items() if f.lower().endswith(suffixes)
    }
    if len(found) == 1:
        return found.pop()
    if not found:
        raise DataError(
            f"cannot tell the format of {path} from its name; set data.format to parquet or csv"
        )
    raise DataError(f"{path} mixes Parquet and CSV files; point it at one kind or set data.format")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
