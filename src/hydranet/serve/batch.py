"""Batch prediction: a file in, a file of per-task predictions out, in bounded memory."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hydranet.errors import UserError


def predict_file(run_dir: str | Path, input_path: str, output: str | Path, keep: list[str] | None = None, chunk_rows: int = 262_144) -> int:
    """Stream ``input_path`` in chunks through the run's model into ``output`` (.parquet or .csv).

    The output is written under a temporary name and renamed when complete, so a
    failure never leaves a partial file (or destroys an earlier one).
    """
    from hydranet.data.sources import iter_batches
    from hydranet.run import Run

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UserError(f"--output {output}: use a .parquet or .csv file name")
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise UserError(f"cannot write {output}: directory {output.parent} does not exist or is not writable")
    run = Run.load(run_dir)
    keep = list(keep or [])
    columns = list(run.spec.data.numeric) + list(run.spec.data.categorical)
    columns += [c for c in keep if c not in columns]
    tmp = output.with_name(output.name + ".tmp")
    writer = None
    rows = 0
    try:
        for batch in iter_batches(input_path, run.spec.data.format, columns, chunk_rows):
            table = pa.Table.from_batches([batch])
            preds = run.predict(table)
            for c in reversed(keep):
                preds = preds.add_column(0, c, table.column(c))
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), preds.schema) if suffix == ".parquet" else pacsv.CSVWriter(str(tmp), preds.schema)
            writer.write_table(preds)
            rows += preds.num_rows
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
