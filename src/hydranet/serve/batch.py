"""Batch prediction: a file in, a file of per-task predictions out, in bounded memory.

The input is read in chunks of ``chunk_rows`` rows (``iter_batches``), each
chunk is predicted and appended to the output, so memory holds one chunk at a
time whatever the file size. A run compressed by ``hydranet compress`` (ONNX
only) predicts with onnxruntime. CSV cannot hold list columns (multiclass
``<task>_probs``, multilabel probabilities): there they are written as JSON
text, e.g. ``[0.1,0.7,0.2]``.
"""

from __future__ import annotations

import glob
import os
import secrets
import sys
from fnmatch import fnmatch
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hydranet.errors import DataError, UserError
from hydranet.serve.bad_rows import (
    BAD_ROWS,
    ERROR_COLUMN,
    BadRows,
    output_columns,
    predict_rows,
)
from hydranet.serve.validate import TableCheck


def predict_file(
    run_dir: str | Path,
    input_path: str,
    output: str | Path,
    keep: list[str] | None = None,
    chunk_rows: int = 262_144,
    progress: bool | None = None,
    backend: str = "auto",
    *,
    overwrite: bool = False,
    bad_rows: str = "refuse",
    found: BadRows | None = None,
) -> int:
    """Stream ``input_path`` in chunks through the run's model into ``output`` (.parquet or .csv).

    The output is written under a temporary name beside it and renamed when complete, so a
    failure never leaves a partial file (or destroys an earlier one). An output that is
    the input (or one of its files, or inside its directory) is refused; an existing output
    is replaced only with ``overwrite``. Rows that cannot be predicted (see
    :func:`predict_rows`) are counted into ``found``; ``bad_rows="refuse"`` then refuses
    the whole input (a DataError naming the first rows; nothing written), ``"mark"`` writes
    them with null predictions and the reason in column ``error``. ``progress``: a progress
    bar on stderr (default: when stderr is a terminal). Returns the rows written.
    """
    from hydranet.data.sources import iter_batches
    from hydranet.serve.predictor import Predictor

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UserError(f"--output {output}: use a .parquet or .csv file name")
    if bad_rows not in BAD_ROWS:
        raise UserError(f"--bad-rows {bad_rows}: choose one of {', '.join(BAD_ROWS)}")
    check_output(input_path, output, overwrite)
    predictor = Predictor.load(run_dir, backend)
    keep = list(keep or [])
    check_keep(keep, output_columns(predictor.tasks, bad_rows))
    check = TableCheck(predictor.preprocessor)
    found = found if found is not None else BadRows()
    columns = predictor.preprocessor.columns
    columns += [c for c in keep if c not in columns]
    # a unique hidden name: two runs writing the same output never share a temporary file
    tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.tmp")
    writer = None
    rows = 0
    bar = _Progress(
        _total_rows(input_path), enabled=sys.stderr.isatty() if progress is None else progress
    )
    try:
        with bar:
            data = predictor.spec.data  # the files are read as training read its own (CSV options)
            for batch in iter_batches(
                input_path, columns=columns, batch_rows=chunk_rows, data=data
            ):
                if rows == 0:
                    check.check_schema(batch.schema, input_path)
                preds = predict_rows(
                    batch, check, predictor.backend.forward, predictor.tasks, bad_rows, found, rows
                )
                rows += preds.num_rows
                bar.advance(preds.num_rows)
                if bad_rows == "refuse" and found.count:
                    continue  # refused: read on only to count the bad rows
                for c in reversed(keep):
                    preds = preds.add_column(0, c, pa.chunked_array([batch.column(c)]))
                if suffix == ".csv":
                    preds = lists_as_json(preds)
                if writer is None:
                    writer = (
                        pq.ParquetWriter(str(tmp), preds.schema)
                        if suffix == ".parquet"
                        else pacsv.CSVWriter(str(tmp), preds.schema)
                    )
                writer.write_table(preds)
        if bad_rows == "refuse" and found.count:
            raise DataError(
                found.message(
                    input_path,
                    rows,
                    "nothing written; pass --bad-rows mark to predict the other rows "
                    f"(these get null predictions and the reason in column {ERROR_COLUMN!r})",
                )
            )
        if writer is None:
            raise UserError(f"{input_path} has no rows")
        writer.close()
        writer = None
        _publish(tmp, output, overwrite)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def check_output(input_path: str, output: Path, overwrite: bool) -> None:
    """A one-line UserError when ``output`` is the input, one of its files or inside its
    directory (even with ``overwrite``), or exists and ``overwrite`` is not given."""
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise UserError(
            f"cannot write {output}: directory {output.parent} does not exist or is not writable"
        )
    if output.is_dir():
        raise UserError(f"--output {output} is a directory; name a .parquet or .csv file")
    source = Path(input_path).expanduser()
    target = output.resolve()
    if source.is_dir():
        if target.is_relative_to(source.resolve()):
            raise UserError(
                f"--output {output} is inside the input directory {input_path}, whose files "
                "are all read as input; write it elsewhere"
            )
        files: list[str] = []
    elif source.is_file():
        files = [str(source)]
    else:
        files = glob.glob(str(source), recursive=True)
        if glob.has_magic(input_path) and fnmatch(str(target), str(source.resolve())):
            raise UserError(
                f"--output {output} matches the input pattern {input_path}; write it elsewhere"
            )
    if output.exists():
        if any(os.path.samefile(f, output) for f in files):
            raise UserError(
                f"--output {output} is the input file; write the predictions to another file"
            )
        if not overwrite:
            raise UserError(f"--output {output} exists; pass --overwrite to replace it")


def check_keep(keep: list[str], outputs: list[pa.Field]) -> None:
    """A one-line UserError for a kept column named twice or named like an output column.

    Refused rather than renamed: the output's column names are what scripts read, and a
    prefix added only when a name happens to clash with a task's would move the column."""
    names = [f.name for f in outputs]
    for i, c in enumerate(keep):
        if c in keep[:i]:
            raise UserError(f"--keep {c}: the column is named twice")
        if c in names:
            what = "the reason a row is not predicted" if c == ERROR_COLUMN else "a prediction"
            raise UserError(
                f"--keep {c}: the output already has a column {c!r} ({what}; output columns: "
                f"{', '.join(names)}); keep it under another name (rename it in the input)"
            )


def _publish(tmp: Path, output: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, output)
        return
    try:
        os.link(tmp, output)  # fails, rather than replaces, when the output appeared meanwhile
    except FileExistsError:
        raise UserError(
            f"--output {output} was created while predicting; pass --overwrite to replace it"
        ) from None
    except OSError:  # a file system without hard links
        if output.exists():
            raise UserError(
                f"--output {output} was created while predicting; pass --overwrite to replace it"
            ) from None
        os.replace(tmp, output)


def lists_as_json(table: pa.Table) -> pa.Table:
    """List columns as JSON text (``[0.1,0.7,0.2]``; a non-finite value is ``null``), vectorized in Arrow."""
    for i, field in enumerate(table.schema):
        if not (pa.types.is_list(field.type) or pa.types.is_large_list(field.type)):
            continue
        lists = table.column(i).combine_chunks()
        values = lists.flatten()
        text = pc.cast(values, pa.string())
        if pa.types.is_floating(values.type):
            text = pc.if_else(pc.is_finite(values), text, "null")
        rebuilt = pa.ListArray.from_arrays(pc.subtract(lists.offsets, lists.offsets[0]), text)
        joined = pc.binary_join_element_wise("[", pc.binary_join(rebuilt, ","), "]", "")
        joined = pc.if_else(lists.is_null(), pa.scalar(None, pa.string()), joined)
        table = table.set_column(i, field.name, joined)
    return table


def _total_rows(path: str) -> int | None:
    """Rows in the input when that is cheap to know (a Parquet file's footer), else None."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".parquet", ".pq", ".parq"):
        try:
            return pq.ParquetFile(p).metadata.num_rows
        except Exception:  # unreadable here: iter_batches will say why
            return None
    return None


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled = total, enabled
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task("predict", total=self.total)
        return self

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, rows)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
