"""The source contract and the ``SOURCES`` registry.

A source is where rows come from: it knows its schema without reading all rows,
yields Arrow record batches of the columns asked for, and reads a whole table.
:func:`open_source` picks the source for an object (a path, a DataFrame, a
table) or takes the one ``data.source`` names, a user's by import path included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from hydranet.errors import DataError, UserError, column_report
from hydranet.registry import Registry
from hydranet.spec_tables import SourceOptions


class Source(ABC):
    """Rows from one place. Subclass, register (``@SOURCES.register("name")``) or name
    by import path in ``data.source``; ``data.source_params`` reach it as ``options``.

    ``location`` is what the spec or the caller gives (``data.train``: a path, a topic,
    a DataFrame); ``options`` is the data part of the spec (format, csv, source_params).
    Problems the user can fix are :class:`~hydranet.errors.DataError` naming ``name``.
    """

    def __init__(self, location: Any, options: SourceOptions | None = None):
        self.location = location
        self.options = options if options is not None else SourceOptions()

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        """Whether ``data.source = "auto"`` picks this source for ``obj``."""
        return False

    @classmethod
    def example(cls, tmp_path: Path) -> Any:
        """An object this source reads (a file written under ``tmp_path``, a frame): a few
        dozen rows of several types with a missing value, for ``tests/test_source_contract.py``."""
        raise NotImplementedError(f"{cls.__name__} gives no example for the contract tests")

    @property
    def name(self) -> str:
        """How messages name the source: a path, 'the pandas DataFrame'."""
        return str(self.location)

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """Column names and types, without reading all rows."""

    @abstractmethod
    def batches(
        self, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_rows`` rows, in the source's row order.

        Columns are checked when this is called; read errors surface during iteration.
        """

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (only ``columns`` if given) as one table."""
        batches = list(self.batches(columns))
        if batches:
            return pa.Table.from_batches(batches)
        schema = self.schema
        return (
            schema if columns is None else pa.schema([schema.field(c) for c in columns])
        ).empty_table()

    def check_columns(self, columns: list[str] | None) -> None:
        if not columns:
            return
        check_columns(self.schema.names, columns, self.name)


def check_columns(names: list[str], columns: list[str], where: str) -> None:
    """A DataError naming every column of ``columns`` that ``names`` lacks, one line each."""
    missing = [f"column {c!r} not found in {where}" for c in columns if c not in names]
    if missing:
        raise DataError(column_report(missing, names, where))


def rechunk(batches: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of at most ``batch_rows`` (empty batches dropped)."""
    for b in batches:
        for start in range(0, b.num_rows, batch_rows):
            yield b.slice(start, batch_rows)


def example_rows(n: int = 50) -> pa.Table:
    """The rows of the sources' examples: an int, a float and a text column, a missing
    float and a missing text cell."""
    x = [round(0.25 * i - 3, 2) for i in range(n)]
    x[3] = None
    k = [("red", "green", "blue")[i % 3] for i in range(n)]
    k[5] = None
    return pa.table({"id": pa.array(range(n), pa.int64()), "x": pa.array(x, pa.float64()), "k": k})


SOURCES: Registry[type[Source]] = Registry("source")


def source_class(name: str) -> type[Source]:
    """The registered (or imported, for 'pkg.mod:Source') source class of ``name``."""
    cls = SOURCES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise UserError(
            f"source {name!r} is not a hydranet.data.sources.Source subclass (got {cls!r})"
        )
    return cls


def open_source(obj: Any, options: SourceOptions | None = None) -> Source:
    """The source of ``obj``: ``options.source`` when set, else the one that accepts it.

    With ``source = "auto"``: a path (str or PathLike) → files, a pandas DataFrame or a
    pyarrow Table / RecordBatch → frame, a Spark DataFrame → spark. A Source is returned
    as it is.
    """
    if isinstance(obj, Source):
        return obj
    options = options if options is not None else SourceOptions()
    if options.source != "auto":
        return source_class(options.source)(obj, options)
    for name in SOURCES.names():
        cls = SOURCES.get(name)
        if cls.accepts(obj):
            return cls(obj, options)
    raise DataError(
        f"cannot read rows from a {type(obj).__name__}: give a file, directory or glob path, "
        "a pandas DataFrame, a pyarrow Table or RecordBatch, or a Spark DataFrame "
        f"(or set data.source; sources: {', '.join(SOURCES.names())})"
    )


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
