"""Batch prediction: a file in, a file of per-task predictions out, in bounded memory.

The input is read in chunks of ``chunk_rows`` rows (``iter_batches``), each
chunk is predicted and appended to the output, so memory holds one chunk at a
time whatever the file size. A run compressed by ``hydranet compress`` (ONNX
only) predicts with onnxruntime. CSV cannot hold list columns (multiclass
``<task>_probs``, multilabel probabilities): there they are written as JSON
text, e.g. ``[0.1,0.7,0.2]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hydranet.errors import UserError


def predict_file(
    run_dir: str | Path,
    input_path: str,
    output: str | Path,
    keep: list[str] | None = None,
    chunk_rows: int = 262_144,
    progress: bool | None = None,
    backend: str = "auto",
) -> int:
    """Stream ``input_path`` in chunks through the run's model into ``output`` (.parquet or .csv).

    The output is written under a temporary name and renamed when complete, so a
    failure never leaves a partial file (or destroys an earlier one). ``progress``:
    a progress bar on stderr (default: when stderr is a terminal).
    """
    from hydranet.data.sources import iter_batches
    from hydranet.serve.predictor import Predictor

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UserError(f"--output {output}: use a .parquet or .csv file name")
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise UserError(
            f"cannot write {output}: directory {output.parent} does not exist or is not writable"
        )
    predictor = Predictor.load(run_dir, backend)
    keep = list(keep or [])
    columns = predictor.preprocessor.columns
    columns += [c for c in keep if c not in columns]
    tmp = output.with_name(output.name + ".tmp")
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
                preds = predictor.predict_table(batch)
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
                rows += preds.num_rows
                bar.advance(preds.num_rows)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is None:
        raise UserError(f"{input_path} has no rows")
    writer.close()
    os.replace(tmp, output)
    return rows


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
