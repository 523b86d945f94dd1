"""A Run: the self-contained directory a training leaves, and everything done with it after.

``Run.load(dir)`` rebuilds the model from JSON metadata and safetensors weights
(never unpickling); ``evaluate`` computes whole-split metrics; ``predict``
turns a table of feature columns into per-task predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hydranet import rundir
from hydranet.data.preprocess import Preprocessor
from hydranet.errors import DataError, UserError
from hydranet.evaluate.inference import predict_arrays, split_metrics
from hydranet.models.build import build_model
from hydranet.models.encoders.base import weights_from_checkpoint
from hydranet.spec import Spec
from hydranet.tasks import Task
from hydranet.train.state_io import load_tensors


class Run:
    def __init__(
        self,
        path: Path,
        spec: Spec,
        preprocessor: Preprocessor,
        tasks: list[Task],
        model: torch.nn.Module,
        device: torch.device,
    ):
        self.path, self.spec, self.preprocessor, self.tasks, self.model, self.device = (
            path,
            spec,
            preprocessor,
            tasks,
            model,
            device,
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Run:
        path = Path(path)
        rundir.verify_run(path)  # changed bytes are named as such, before anything parses them
        spec, prep, tasks, encoder_states = rundir.read_meta(path)  # "not a complete run" first
        weights = path / rundir.WEIGHTS
        if not weights.is_file() and (path / "compress.json").is_file():
            raise UserError(
                f"{path} is an int8 (ONNX-only) run: use 'hydranet predict' or 'hydranet serve --backend onnxruntime' with it; evaluate the original run for PyTorch metrics"
            )
        if not weights.is_file():
            raise UserError(
                f"{path} has no trained weights ({rundir.WEIGHTS}); the training did not finish — resume it with 'hydranet train SPEC --out {path} --resume'"
            )
        try:
            with weights_from_checkpoint():  # pretrained encoders' files are not needed
                model = build_model(spec, prep, tasks, encoder_states)
        except UserError:
            raise
        except Exception as e:  # run files that parsed but do not describe a model together
            culprit = (
                rundir.ENCODERS if encoder_states else f"{rundir.SPEC} / {rundir.PREPROCESSOR}"
            )
            raise UserError(
                f"{path}: cannot rebuild the model from {culprit}: {(str(e).splitlines() or [''])[0] or type(e).__name__}"
            ) from None
        tensors, _ = load_tensors(weights)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise UserError(
                f"{weights} does not match the model described by {path / rundir.SPEC}: {str(e).splitlines()[0]}"
            ) from None
        dev = torch.device(device)
        model.to(dev).eval()
        return cls(path, spec, prep, tasks, model, dev)

    # ------------------------------------------------------------ artifacts
    @property
    def metrics_log(self) -> list[dict[str, Any]]:
        return rundir.read_metrics(self.path)

    @property
    def final_metrics(self) -> dict[str, Any]:
        p = self.path / rundir.FINAL
        return rundir.read_json(p) if p.exists() else {}

    # ------------------------------------------------------------ use
    def _table(self, data: Any, columns: list[str] | None = None) -> pa.Table:
        if isinstance(data, pa.Table):
            return data
        if isinstance(data, (str, Path)):
            from hydranet.data.sources import read_table

            return read_table(str(data), data=self.spec.data)  # read as training read its files
        try:
            import pandas as pd

            if isinstance(data, pd.DataFrame):
                return _from_pandas(data, columns)
        except ImportError:  # pragma: no cover - pandas is a dependency
            pass
        raise UserError(
            f"cannot predict on {type(data).__name__}; pass a pyarrow Table, a pandas DataFrame or a file path"
        )

    def predict_arrays(self, table: pa.Table, batch_size: int = 65536) -> dict[str, np.ndarray]:
        features = self.preprocessor.transform(table)
        preds, _ = predict_arrays(self.model, features, self.tasks, batch_size, self.device)
        return preds

    def _table_check(self):
        from hydranet.serve.validate import TableCheck

        check = getattr(self, "_check", None)
        if check is None:  # built once per run: it holds the vocabularies' lookups
            check = self._check = TableCheck(self.preprocessor)
        return check

    def _forward(self, batch_size: int):
        def forward(features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
            return predict_arrays(self.model, features, self.tasks, batch_size, self.device)[0]

        return forward

    def predict(self, data: Any, batch_size: int = 65536, *, bad_rows: str = "refuse"):
        """Per-task predictions: binary → probability, multiclass → class and probabilities,
        multilabel → probabilities, regression → value. Same type out as in (Table or DataFrame).

        Values are checked as ``hydranet predict`` and the server check them: a row with a
        value the model cannot take (beyond its range, text in a numeric column) or a
        prediction that is not finite is a DataError naming it (``bad_rows="refuse"``), or
        gets null predictions and its reason in column ``error`` (``bad_rows="mark"``).
        Zero rows give an empty table of the prediction columns.
        """
        from hydranet.serve.bad_rows import BAD_ROWS, BadRows, predict_rows

        if bad_rows not in BAD_ROWS:
            raise UserError(f"bad_rows={bad_rows!r}: choose one of {', '.join(BAD_ROWS)}")
        where = _describe(data)
        table = self._table(data, self.preprocessor.columns)
        check = self._table_check()
        check.check_schema(table.schema, where)
        found = BadRows()
        forward = self._forward(batch_size)
        out = predict_rows(table, check, forward, self.tasks, bad_rows, found, 0, batch_size)
        if found.count and bad_rows == "refuse":
            raise DataError(
                found.message(
                    where,
                    table.num_rows,
                    "pass bad_rows='mark' to predict the other rows (these get null predictions "
                    "and the reason in column 'error')",
                )
            )
        if not isinstance(data, (pa.Table, str, Path)):
            return out.to_pandas()
        return out

    def evaluate(self, split: str = "test", batch_size: int = 65536) -> dict[str, dict[str, float]]:
        """Metrics per task on a split of the run's data ('train', 'validation', 'test') or on a file."""
        from hydranet.data.sources import load_splits
        from hydranet.train.prepare import needed_columns

        if split in ("train", "validation", "test"):
            tables = load_splits(self.spec.data, needed_columns(self.spec))
            if split not in tables:
                raise UserError(
                    f"the run's data has no {split!r} split (available: {', '.join(tables)})"
                )
            table = tables[split]
        else:
            table = self._table(split)
        preds = self._checked_predictions(table, split, batch_size)
        labels, masks = {}, {}
        for t in self.tasks:
            labels[t.name], masks[t.name] = t.encode(table)
            if not masks[t.name].any():
                raise DataError(f"split {split!r} has no labeled rows for task {t.name!r}")
        return split_metrics(self.tasks, preds, labels, masks)

    def _checked_predictions(
        self, table: pa.Table, where: str, batch_size: int
    ) -> dict[str, np.ndarray]:
        """Raw outputs per task for metrics; rows that predict would refuse (a value beyond the
        model's range, a prediction that is not finite) are refused here too: metrics over
        them would be NaN, or silently computed on clipped inputs."""
        from hydranet.serve.bad_rows import BadRows, checked_outputs

        check = self._table_check()
        check.check_schema(table.schema, where)
        if table.num_rows == 0:
            raise DataError(f"{where}: no rows to evaluate")
        preds, reasons = checked_outputs(
            table, check, self._forward(batch_size), self.tasks, batch_size
        )
        if reasons:
            found = BadRows()
            for r in sorted(reasons):
                found.add(r + 1, reasons[r])
            raise DataError(
                found.message(where, table.num_rows, "fix or drop these rows to evaluate")
            )
        return preds


def _describe(data: Any) -> str:
    if isinstance(data, (str, Path)):
        return str(data)
    return "the Arrow table" if isinstance(data, pa.Table) else "the pandas DataFrame"


def _from_pandas(frame: Any, columns: list[str] | None) -> pa.Table:
    """A DataFrame as an Arrow table (only ``columns`` when it has them all); a column Arrow
    cannot type (numbers and strings mixed) is a DataError naming it and two of its rows."""
    if columns is not None and all(c in frame.columns for c in columns):
        frame = frame[columns]
    from hydranet.data.sources.frame import plain_strings

    try:
        return plain_strings(pa.Table.from_pandas(frame, preserve_index=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        pass
    for name in frame.columns:
        try:
            pa.array(frame[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise DataError(
                f"the pandas DataFrame: column {name!r} {_mixed(frame[name], e)}"
            ) from None
    raise DataError(
        "the pandas DataFrame cannot be converted to an Arrow table"
    )  # pragma: no cover


def _mixed(column: Any, e: BaseException) -> str:
    """What is wrong with a column Arrow could not convert: the first rows of two kinds."""
    first: dict[str, tuple[int, Any]] = {}
    for i, v in enumerate(column.tolist()):
        if v is None or (isinstance(v, float) and v != v):
            continue
        kind = (
            "string"
            if isinstance(v, str)
            else "number"
            if isinstance(v, (int, float))
            else type(v).__name__
        )
        first.setdefault(kind, (i, v))
        if len(first) == 2:
            (k1, (r1, v1)), (k2, (r2, v2)) = first.items()
            return (
                f"mixes types: row {r1 + 1} holds the {k1} {v1!r}, row {r2 + 1} the {k2} {v2!r}; "
                "make the column one type"
            )
    return f"cannot be converted to Arrow: {str(e).splitlines()[0]}"
