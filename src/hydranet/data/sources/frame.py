"""The ``frame`` source: rows already in memory (a pandas DataFrame, a pyarrow Table or
RecordBatch), so the Python API and a scikit-learn wrapper need no files.

The values are taken as they are: a frame is typed data, so an empty string in it is
a value (CSV's blank-cell rules are for text files); pandas' None and NaN are missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from hydranet.data.sources.base import SOURCES, Source, example_rows, first_line
from hydranet.errors import DataError


def _is_pandas(obj: Any) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    return isinstance(obj, pd.DataFrame)


def plain_strings(data: pa.Table | pa.Schema) -> pa.Table | pa.Schema:
    """Text columns as Arrow ``string``, the type files give: pandas 3 keeps text in its
    ``str`` dtype, which Arrow converts to ``large_string``, so the same rows from a
    DataFrame and from a file had different types (seen with pandas 3.1). A table whose text
    does not fit 32-bit offsets (over 2 GiB in one chunk) keeps ``large_string``."""
    schema = data if isinstance(data, pa.Schema) else data.schema
    if not any(pa.types.is_large_string(f.type) for f in schema):
        return data
    plain = pa.schema(
        [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema],
        metadata=schema.metadata,
    )
    if isinstance(data, pa.Schema):
        return plain
    try:
        return data.cast(plain)
    except (pa.ArrowInvalid, pa.ArrowCapacityError):
        return data


@SOURCES.register("frame")
class FrameSource(Source):
    """An in-memory pandas DataFrame, pyarrow Table or RecordBatch."""

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return isinstance(obj, (pa.Table, pa.RecordBatch)) or _is_pandas(obj)

    @classmethod
    def example(cls, tmp_path: Path) -> Any:
        """A pandas DataFrame of :func:`example_rows` (the path a user's frame takes)."""
        return example_rows().to_pandas()

    @property
    def name(self) -> str:
        if _is_pandas(self.location):
            return "the pandas DataFrame"
        return f"the Arrow {'table' if isinstance(self.location, pa.Table) else 'record batch'}"

    @property
    def schema(self) -> pa.Schema:
        obj = self.location
        if isinstance(obj, (pa.Table, pa.RecordBatch)):
            return obj.schema
        if not _is_pandas(obj):
            raise DataError(
                f"the frame source takes a pandas DataFrame or an Arrow table, not a {type(obj).__name__}"
            )
        try:
            return plain_strings(pa.Schema.from_pandas(obj, preserve_index=False))
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise DataError(f"cannot read {self.name}: {first_line(e)}") from None

    def table(self, columns: list[str] | None = None) -> pa.Table:
        self.check_columns(columns)
        obj = self.location
        if isinstance(obj, pa.RecordBatch):
            obj = pa.Table.from_batches([obj])
        if isinstance(obj, pa.Table):
            return obj if columns is None else obj.select(columns)
        try:
            # only the asked-for columns are converted: a frame can be much wider
            return plain_strings(
                pa.Table.from_pandas(obj if columns is None else obj[columns], preserve_index=False)
            )
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise DataError(f"cannot read {self.name}: {first_line(e)}") from None

    def batches(
        self, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        table = self.table(columns)
        return (b for b in table.to_batches(max_chunksize=batch_rows) if b.num_rows)
