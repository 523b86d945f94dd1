"""The ``files`` source: Parquet or CSV files, directories and globs.

Everything goes through :mod:`pyarrow.dataset`, so a directory of part files
(hive-partitioned or not), a glob and a single file are read the same way, only
the requested columns are decoded, and batches can stream a table larger than
memory.

CSV cells are read as ``data.csv`` says: a blank cell (after stripping surrounding
whitespace, by default) and any of ``null_values`` is missing in every column, never
the text ``""``. A file that is not UTF-8 is one DataError naming the file and the
byte offset of its first bad byte (found only after pyarrow has failed, so reading
a good file costs nothing extra).
"""

from __future__ import annotations

import codecs
import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from hydranet.data.sources.base import (
    SOURCES,
    Source,
    check_columns,
    example_rows,
    first_line,
)
from hydranet.errors import DataError
from hydranet.spec_tables import CsvSpec, SourceOptions

_SUFFIXES = {
    "parquet": (".parquet", ".pq", ".parq"),
    "csv": (".csv", ".csv.gz", ".csv.bz2", ".csv.zst"),
}
# Whitespace-only cells pyarrow itself reads as null when strip_whitespace is on, so that
# type inference sees a numeric column with blank-looking cells as numeric; longer runs
# and padded null spellings are caught after reading (_clean).
_BLANK_RUNS = (" ", "  ", "   ", "    ", "\t")


@SOURCES.register("files")
class FileSource(Source):
    """A Parquet or CSV file, a directory of part files or a glob (``data.format``, ``data.csv``)."""

    def __init__(self, location: Any, options: SourceOptions | None = None):
        super().__init__(location, options)
        if not self.accepts(location):
            raise DataError(
                f"the files source reads a path, not a {type(location).__name__}; set data.source"
            )
        self.path = os.fspath(location)
        self.dataset = _open(self.path, self.options.format, None, self.options.csv, text=False)
        self.csv = isinstance(self.dataset.format, ds.CsvFileFormat)
        self._casts: dict[str, pa.DataType] | None = None

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return isinstance(obj, (str, os.PathLike))

    @classmethod
    def example(cls, tmp_path: Path) -> str:
        """A CSV file of :func:`example_rows`: padded cells, and blank-looking cells for the
        missing values; the missing number is a run of spaces that pyarrow reads as text,
        so the column is a number only after the cleanup (``schema`` must say so)."""
        table = example_rows()
        lines = ["id,x,k"]
        for row in table.to_pylist():
            x, k = row["x"], row["k"]
            x_text = " " * 6 if x is None else (f" {x} " if row["id"] % 4 == 0 else str(x))
            lines.append(f"{row['id']},{x_text},{'  ' if k is None else k}")
        path = Path(tmp_path) / "example.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    @property
    def name(self) -> str:
        return self.path

    @property
    def casts(self) -> dict[str, pa.DataType]:
        """Text columns that hold numbers once blank-looking cells are null (CSV only)."""
        if self._casts is None:
            self._casts = _csv_casts(self) if self.csv and self.options.csv.strip_whitespace else {}
        return self._casts

    @property
    def schema(self) -> pa.Schema:
        schema = self.dataset.schema
        for name, type_ in self.casts.items():
            i = schema.get_field_index(name)
            schema = schema.set(i, schema.field(i).with_type(type_))
        return schema

    def check_columns(self, columns: list[str] | None) -> None:
        if columns:
            check_columns(self.dataset.schema.names, columns, self.path)
        if self.csv:
            _check_text(self.dataset, columns, self.path)

    def table(self, columns: list[str] | None = None) -> pa.Table:
        self.check_columns(columns)
        casts = self.casts
        try:
            table = self.dataset.to_table(columns=columns)
        except (pa.ArrowException, OSError) as e:
            self._read_error(e)
        return self._clean(table, casts)

    def batches(
        self, columns: list[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        self.check_columns(columns)
        return self._batches(columns, batch_rows, self.casts)

    def _batches(
        self, columns: list[str] | None, batch_rows: int, casts: dict[str, pa.DataType]
    ) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self.dataset.to_batches(columns=columns, batch_size=batch_rows):
                if batch.num_rows:
                    yield self._clean(batch, casts)
        except (pa.ArrowException, OSError) as e:
            self._read_error(e)

    def clean(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch read straight from ``self.dataset`` (e.g. one fragment at a time) as
        ``batches`` would give it: blank-looking cells null, text columns of numbers cast."""
        return self._clean(batch, self.casts)

    def _clean(self, data, casts: dict[str, pa.DataType]):
        if not (self.csv and self.options.csv.strip_whitespace):
            return data  # pyarrow's own null_values did all there is to do
        return _clean(data, self.options.csv, casts, self.path)

    def _read_error(self, e: BaseException) -> NoReturn:
        if self.csv and _mentions_utf8(e):
            _raise_if_not_utf8(self.dataset.files, self.path)
        raise DataError(f"cannot read {self.path}: {first_line(e)}") from None


# ---------------------------------------------------------------- opening
def _open(
    path: str,
    format: str,
    columns: list[str] | None,
    csv: CsvSpec | None = None,
    *,
    text: bool = True,
) -> ds.Dataset:
    """The dataset of a path, its ``columns`` checked (and, with ``text``, their UTF-8)."""
    files, base = _files(str(path))
    fmt = _format(path, files, format)
    if format == "auto":
        # stray files (README, .crc) beside the data are not part of it
        files = [f for f in files if f.lower().endswith(_SUFFIXES[fmt])]
    file_format: Any = _csv_format(csv if csv is not None else CsvSpec()) if fmt == "csv" else fmt
    try:
        if base is not None:
            dataset = ds.dataset(
                files, format=file_format, partitioning="hive", partition_base_dir=base
            )
        else:
            dataset = ds.dataset(files, format=file_format)
        dataset.schema.names  # noqa: B018  (a header that is not UTF-8 fails only here)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        if fmt == "csv" and (isinstance(e, UnicodeDecodeError) or _mentions_utf8(e)):
            _raise_if_not_utf8(files, path)
        raise DataError(f"cannot read {path} as {fmt}: {first_line(e)}") from None
    if columns:
        check_columns(dataset.schema.names, columns, path)
    if text and fmt == "csv":
        _check_text(dataset, columns, path)
    return dataset


def _csv_format(csv: CsvSpec) -> ds.CsvFileFormat:
    if csv.column_names:
        read = pacsv.ReadOptions(column_names=csv.column_names, skip_rows=1 if csv.header else 0)
    else:
        read = pacsv.ReadOptions(autogenerate_column_names=not csv.header)
    nulls = _null_values(csv)
    if csv.strip_whitespace:
        nulls += [s for s in _BLANK_RUNS if s not in nulls]
    return ds.CsvFileFormat(
        read_options=read,
        parse_options=pacsv.ParseOptions(delimiter=csv.delimiter),
        convert_options=pacsv.ConvertOptions(null_values=nulls, strings_can_be_null=True),
    )


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


# ---------------------------------------------------------------- CSV cells
def _blank_to_null(col, nulls: pa.Array):
    trimmed = pc.utf8_trim_whitespace(col)
    if not pc.any(pc.not_equal(pc.binary_length(trimmed), pc.binary_length(col))).as_py():
        return col  # nothing to strip: pyarrow already read the exact null spellings as null
    return pc.if_else(pc.is_in(trimmed, value_set=nulls), pa.scalar(None, col.type), trimmed)


def _null_values(csv: CsvSpec) -> list[str]:
    """The cells that mean missing: blank whatever the list says, then ``null_values``."""
    return list(dict.fromkeys(["", *csv.null_values]))


def _null_set(csv: CsvSpec) -> pa.Array:
    return pa.array(_null_values(csv), pa.string())


def _clean(data, csv: CsvSpec, casts: dict[str, pa.DataType], path: str):
    """Text cells stripped, blank and null spellings made null, numeric text cast."""
    nulls = _null_set(csv)
    cols = []
    for name, col in zip(data.schema.names, data.columns, strict=True):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = _blank_to_null(col, nulls)
            if name in casts:
                try:
                    col = pc.cast(col, casts[name])
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise DataError(
                        f"cannot read {path}: column {name!r} holds numbers at first, then: {first_line(e)}"
                    ) from None
        cols.append(col)
    return type(data).from_arrays(cols, names=data.schema.names)


def _csv_casts(source: FileSource) -> dict[str, pa.DataType]:
    """Text columns whose first block is all numbers (or booleans) once stripped and nulled.

    pyarrow infers a column's type from the first block of the first file; a cell it did
    not see as null (a long run of spaces, a padded ' NA ') made it text. The same block,
    cleaned, decides the type here, so every batch gets the same one.
    """
    dataset = source.dataset
    text = [f.name for f in dataset.schema if pa.types.is_string(f.type)]
    if not text:
        return {}
    fragment = next(iter(dataset.get_fragments()), None)
    if fragment is None:
        return {}
    try:
        scanner = ds.Scanner.from_fragment(
            fragment, schema=dataset.schema, columns=text, batch_readahead=1, fragment_readahead=1
        )
        first = next((b for b in scanner.to_batches() if b.num_rows), None)
    except (pa.ArrowException, OSError):
        # read ahead, a later block can fail first: reading the rows reports it, not the schema
        return {}
    if first is None:
        return {}
    nulls = _null_set(source.options.csv)
    casts: dict[str, pa.DataType] = {}
    for name, col in zip(first.schema.names, first.columns, strict=True):
        cleaned = _blank_to_null(col, nulls)
        if cleaned.null_count == len(cleaned):
            continue
        for type_ in (pa.int64(), pa.float64(), pa.bool_()):
            try:
                pc.cast(cleaned, type_)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            casts[name] = type_
            break
    return casts


# ---------------------------------------------------------------- UTF-8
def _mentions_utf8(e: BaseException) -> bool:
    text = str(e).lower()
    return "utf8" in text or "utf-8" in text


def _check_text(dataset: ds.Dataset, columns: list[str] | None, path: str) -> None:
    """pyarrow infers 'binary' for a CSV column with invalid UTF-8 in its first block."""
    schema = dataset.schema
    names = columns or schema.names
    if any(pa.types.is_binary(schema.field(c).type) for c in names):
        _raise_if_not_utf8(dataset.files, path)


def _raise_if_not_utf8(files: list[str], path: str) -> None:
    for file in files:
        bad = first_bad_utf8(file)
        if bad is not None:
            offset, byte, line = bad
            raise DataError(
                f"{file} is not UTF-8 text: byte offset {offset} (line {line}) holds 0x{byte:02x}; "
                "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            )


def first_bad_utf8(file: str, chunk: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, byte, 1-based line) of the first byte of ``file`` that is not UTF-8.

    A compressed file (.gz, .bz2, .zst) is decoded first; the offset is into its text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    fed, lines = 0, 1
    with pa.input_stream(file, compression="detect") as f:
        while True:
            data = f.read(chunk)
            final = not data
            pending = decoder.getstate()[0]  # an unfinished multi-byte character, no newline
            try:
                decoder.decode(data, final)
            except UnicodeDecodeError as e:
                seen = pending + data
                lines += seen[: e.start].count(b"\n")
                return fed - len(pending) + e.start, seen[e.start], lines
            if final:
                return None
            fed += len(data)
            lines += data.count(b"\n")
