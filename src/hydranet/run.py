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
    def _table(self, data: Any) -> pa.Table:
        if isinstance(data, pa.Table):
            return data
        if isinstance(data, (str, Path)):
            from hydranet.data.sources import read_table

            return read_table(str(data), data=self.spec.data)  # read as training read its files
        try:
            import pandas as pd

            if isinstance(data, pd.DataFrame):
                return pa.Table.from_pandas(data, preserve_index=False)
        except ImportError:  # pragma: no cover - pandas is a dependency
            pass
        raise UserError(
            f"cannot predict on {type(data).__name__}; pass a pyarrow Table, a pandas DataFrame or a file path"
        )

    def predict_arrays(self, table: pa.Table, batch_size: int = 65536) -> dict[str, np.ndarray]:
        features = self.preprocessor.transform(table)
        preds, _ = predict_arrays(self.model, features, self.tasks, batch_size, self.device)
        return preds

    def predict(self, data: Any, batch_size: int = 65536):
        """Per-task predictions: binary → probability, multiclass → class and probabilities,
        multilabel → probabilities, regression → value. Same type out as in (Table or DataFrame)."""
        table = self._table(data)
        preds = self.predict_arrays(table, batch_size)
        cols: dict[str, pa.Array] = {}
        for t in self.tasks:
            cols.update(t.to_arrow(preds[t.name]))
        out = pa.table(cols)
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
        preds = self.predict_arrays(table, batch_size)
        labels, masks = {}, {}
        for t in self.tasks:
            labels[t.name], masks[t.name] = t.encode(table)
            if not masks[t.name].any():
                raise DataError(f"split {split!r} has no labeled rows for task {t.name!r}")
        return split_metrics(self.tasks, preds, labels, masks)
