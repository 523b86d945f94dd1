"""A run ready for inference: its preprocessor, its tasks and one forward pass.

Two backends compute the same thing, the model's outputs after each task's
activation (probabilities, values):

* ``torch``: the run's ``model.safetensors`` through :meth:`hydranet.Run.load`.
* ``onnxruntime``: an ONNX graph written by ``hydranet export`` (or the int8
  one written by ``hydranet compress``). Preprocessing stays in Python: the
  graph takes the batch format's features, one input per feature group named
  after it (categorical int64 ``[B, C]``, numeric float32 ``[B, width]``, text ids
  int64 ``[B, C, T]``, images uint8 ``[B, C, 3, S, S]``, as ``Preprocessor.transform``
  makes them: tokenizing and image decoding stay in Python), so the run's ``preprocessor.json`` is
  always needed beside it. The graph records a hash of that file and is refused
  with another run's preprocessor.

``backend="auto"`` picks ``torch`` when the run has safetensors weights and
``onnxruntime`` when it only has ``model.onnx`` (a compressed run).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from hydranet import rundir
from hydranet.data.preprocess import Preprocessor
from hydranet.errors import UserError
from hydranet.features import CategoricalGroup
from hydranet.spec import Spec
from hydranet.tasks import Task

ONNX_FILE = "model.onnx"
BACKENDS = ("auto", "torch", "onnxruntime")
# keys of the metadata hydranet writes into an exported ONNX graph
META_PREPROCESSOR = "hydranet.preprocessor_sha256"
META_TASKS = "hydranet.tasks"
# the input names of graphs exported before feature groups, and the groups they are now
_LEGACY_INPUTS = {"cat": "categorical", "num": "numeric"}

Features = dict[str, torch.Tensor]


class Backend(Protocol):
    name: str

    def forward(self, features: Features) -> dict[str, np.ndarray]:
        """Per-task outputs after the task's activation, as float32 arrays, for the
        batch format's features (``{group name: tensor}``)."""
        ...


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, tasks: list[Task]):
        self.model, self.tasks = model.eval(), tasks

    def forward(self, features: Features) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.model(features)
            return {t.name: t.predict(out[t.name]).float().numpy() for t in self.tasks}


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, tasks: list[Task], groups: list[str], threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(
                "the onnxruntime backend needs onnxruntime: pip install 'hydranet[serve]'"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise UserError(
                f"{path} is not a loadable ONNX model: {str(e).splitlines()[0]}"
            ) from None
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        names = [t.name for t in tasks]
        # graph input -> feature group; an input the graph does not use was dropped by the
        # exporter, so the inputs may be fewer than the groups
        self.feeds = {i: i if i in groups else _LEGACY_INPUTS.get(i, "") for i in self.inputs}
        if sorted(outputs) != sorted(names) or not set(self.feeds.values()) <= set(groups):
            raise UserError(
                f"{path} does not fit this run: it has outputs {outputs} for inputs {self.inputs}; "
                f"the run has tasks {names} and feature groups {groups} (re-export it with 'hydranet export')"
            )
        self.names = names
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, features: Features) -> dict[str, np.ndarray]:
        feeds = {i: features[g].numpy() for i, g in self.feeds.items()}
        return dict(zip(self.names, self.session.run(self.names, feeds), strict=True))


class Predictor:
    """``transform`` + ``forward`` + ``to_arrow`` for a run, with either backend."""

    def __init__(
        self,
        path: Path,
        spec: Spec,
        preprocessor: Preprocessor,
        tasks: list[Task],
        backend: Backend,
        weights: Path,
    ):
        self.path, self.spec, self.preprocessor, self.tasks = path, spec, preprocessor, tasks
        self.backend, self.weights = backend, weights

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        backend: str = "auto",
        onnx: str | Path | None = None,
        threads: int = 0,
    ) -> Predictor:
        path = Path(run_dir)
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if backend == "auto":
            onnx_only = not (path / rundir.WEIGHTS).exists() and (path / ONNX_FILE).exists()
            backend = "onnxruntime" if onnx or onnx_only else "torch"
        if backend == "torch":
            if onnx:
                raise UserError("--onnx is for the onnxruntime backend; add --backend onnxruntime")
            if not (path / rundir.WEIGHTS).exists() and (path / ONNX_FILE).exists():
                raise UserError(
                    f"{path} has only an ONNX model (a compressed run?); use --backend onnxruntime or auto"
                )
            from hydranet.run import Run

            run = Run.load(path)
            return cls(
                path,
                run.spec,
                run.preprocessor,
                run.tasks,
                TorchBackend(run.model, run.tasks),
                path / rundir.WEIGHTS,
            )
        onnx_path = Path(onnx) if onnx else path / ONNX_FILE
        # only what this backend reads: a run deployed without model.safetensors still serves
        used = [rundir.SPEC, rundir.PREPROCESSOR, rundir.TASKS, rundir.ENCODERS]
        if onnx_path.resolve() == (path / ONNX_FILE).resolve():
            used.append(ONNX_FILE)  # checked when the manifest lists it (export adds it)
        rundir.verify_run(path, names=used)
        spec, prep, tasks = load_meta(path)
        if not onnx_path.is_file():
            raise UserError(
                f"no ONNX model at {onnx_path}; write one with 'hydranet export {path}'"
            )
        ort_backend = OnnxBackend(onnx_path, tasks, list(prep.groups), threads)
        recorded = ort_backend.metadata.get(META_PREPROCESSOR)
        if recorded is not None and recorded != rundir.file_digest(path / rundir.PREPROCESSOR):
            raise UserError(
                f"{onnx_path} was exported from a run with another preprocessor than {path / rundir.PREPROCESSOR}; "
                "serve it with the run it was exported from"
            )
        return cls(path, spec, prep, tasks, ort_backend, onnx_path)

    # ------------------------------------------------------------ inference
    def forward_table(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        return self.backend.forward(self.preprocessor.transform(table))

    def predict_table(self, table: pa.Table | pa.RecordBatch, batch_rows: int = 65_536) -> pa.Table:
        """Per-task prediction columns, as :meth:`hydranet.Run.predict` gives them."""
        parts = [
            self.forward_table(table.slice(s, batch_rows))
            for s in range(0, max(table.num_rows, 1), batch_rows)
        ]
        preds = {t.name: np.concatenate([p[t.name] for p in parts]) for t in self.tasks}
        return pa.table(self.to_arrow(preds))

    def to_arrow(self, preds: dict[str, np.ndarray]) -> dict[str, pa.Array]:
        cols: dict[str, pa.Array] = {}
        for t in self.tasks:
            cols.update(t.to_arrow(preds[t.name]))
        return cols

    # ------------------------------------------------------------ description
    @cached_property
    def model_version(self) -> str:
        """sha256 of the weights file (safetensors or ONNX) that computes the outputs."""
        return rundir.file_digest(self.weights)

    @cached_property
    def data_version(self) -> str:
        """sha256 of ``preprocessor.json``: the fitted vocabularies and scalings."""
        return rundir.file_digest(self.path / rundir.PREPROCESSOR)

    def metadata(self) -> dict[str, Any]:
        prep, m = self.preprocessor, self.spec.model
        features = []
        for name, g in prep.groups.items():
            for c in g.columns:
                f: dict[str, Any] = {"name": c, "kind": g.kind, "group": name, "nullable": True}
                if isinstance(g, CategoricalGroup):
                    f["categories"] = len(g.vocabularies_[c])
                features.append(f)
        model: dict[str, Any] = {
            "architecture": m.architecture,
            "params": m.params,
            "embedding_dim": m.embedding_dim,
            "tower": m.tower,
            "activation": m.activation,
            "backend": self.backend.name,
            "weights_file": self.weights.name,
            "version": self.model_version,
        }
        if isinstance(self.backend, TorchBackend):
            model["parameters"] = sum(p.numel() for p in self.backend.model.parameters())
        return {
            # the directory's name, not its path: a client need not learn the server's file layout
            "run": {"name": Path(self.path).resolve().name, "version": self.model_version},
            "model": model,
            "data": {"version": self.data_version, "rows_seen": prep.n_rows_seen_},
            "tasks": [task_output(t) for t in self.tasks],
            "features": features,
        }


def task_output(t: Task) -> dict[str, Any]:
    """What a task's prediction columns hold, for the metadata endpoint."""
    return t.describe_output()


def load_meta(path: Path) -> tuple[Spec, Preprocessor, list[Task]]:
    """Spec, preprocessor and fitted tasks of a run directory (JSON only; no weights needed)."""
    spec, prep, tasks, _ = rundir.read_meta(Path(path))
    return spec, prep, tasks
