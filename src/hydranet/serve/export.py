"""ONNX export of a run's model, checked against PyTorch before it is kept.

The graph computes what :class:`~hydranet.serve.predictor.TorchBackend`
computes: inputs ``cat`` (int64 ``[B, C]``) and ``num`` (float32 ``[B, N]``),
the tensors :meth:`Preprocessor.transform` makes; one output per task, named
after it, after the task's activation (sigmoid, softmax, de-standardization);
the batch axis is dynamic. Preprocessing is not in the graph: it stays in
Python, from ``preprocessor.json``, whose sha256 the graph records (see
``META_PREPROCESSOR``) so that a server refuses to pair it with another run's.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With
torch 2.13 on CPU both exporters give a graph within 1e-6 of PyTorch for these
models, but the dynamo exporter needs the extra ``onnxscript`` package, takes
about 15 s instead of under 1 s for a small model, and by default puts the
weights in a side file; the TorchScript one writes one self-contained file
with no extra dependency. It is deprecated upstream; the replacement is
``dynamo=True`` with ``dynamic_shapes={"cat": {0: Dim("batch")}, "num": {0:
Dim("batch")}}`` and ``external_data=False``.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

import hydranet
from hydranet.errors import UserError
from hydranet.serve.predictor import (
    META_PREPROCESSOR,
    META_TASKS,
    ONNX_FILE,
    OnnxBackend,
    file_sha256,
)
from hydranet.spec import Spec
from hydranet.tasks import Task


class ParityError(UserError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    path: Path
    bytes: int
    split: str
    rows: int
    diffs: dict[str, float]  # max |ONNX - PyTorch| per task
    tolerance: float

    @property
    def max_diff(self) -> float:
        return max(self.diffs.values())

    def summary(self) -> str:
        per_task = ", ".join(f"{t} {d:.2e}" for t, d in self.diffs.items())
        return (
            f"wrote {self.path} ({self.bytes / 1024:,.1f} KiB); parity with PyTorch on the {self.split} split "
            f"({self.rows:,} rows): max abs diff {self.max_diff:.2e} ({per_task}), tolerance {self.tolerance:.0e}"
        )


class _WithActivations(nn.Module):
    """The model plus each task's output activation: what the ONNX graph computes."""

    def __init__(self, model: nn.Module, tasks: list[Task]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(cat, num)
        return tuple(t.predict(out[t.name]) for t in self.tasks)


def export_onnx(
    run_dir: str | Path, out: str | Path | None = None, *, tolerance: float = 1e-5, opset: int = 17
) -> ExportReport:
    """Write the run's model as ONNX (default ``RUN/model.onnx``) after a parity check.

    The check runs PyTorch and ONNX Runtime on the run's test split (validation
    when there is no test split); beyond ``tolerance`` nothing is written and a
    :class:`ParityError` says by how much, per task.
    """
    from hydranet.run import Run

    run = Run.load(run_dir)
    out = Path(out) if out else run.path / ONNX_FILE
    if not out.parent.is_dir():
        raise UserError(f"--onnx {out}: directory {out.parent} does not exist")
    tmp = out.with_name(out.name + ".tmp")
    try:
        write_onnx(run.model, run.tasks, run.preprocessor, tmp, opset, source=run.path)
        split, table = evaluation_table(run.spec)
        diffs = parity(run, tmp, table)
        report = ExportReport(out, tmp.stat().st_size, split, table.num_rows, diffs, tolerance)
        if not report.max_diff <= tolerance:  # also catches NaN
            worst = max(diffs, key=lambda t: diffs[t])
            raise ParityError(
                f"ONNX parity check failed: max abs diff {report.max_diff:.3e} > tolerance {tolerance:.0e} "
                f"(task {worst!r}; per task: {', '.join(f'{t} {d:.2e}' for t, d in diffs.items())}); {out} was not written"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def write_onnx(
    model: nn.Module,
    tasks: list[Task],
    preprocessor,
    path: Path,
    opset: int = 17,
    source: Path | None = None,
) -> None:
    """The bare export (no parity check), with hydranet's metadata in the graph."""
    import onnx

    wrapper = _WithActivations(model, tasks).eval()
    # batch 2, not 1: a traced size-1 axis could be mistaken for a constant
    cat = torch.zeros(2, len(preprocessor.categorical), dtype=torch.long)
    num = torch.zeros(2, preprocessor.n_numeric_out, dtype=torch.float32)
    names = [t.name for t in tasks]
    axes = {n: {0: "batch"} for n in ["cat", "num", *names]}
    with warnings.catch_warnings():
        # TracerWarning: BatchedLinear compares the (static) group axis to an int;
        # DeprecationWarning: the TorchScript exporter (see the module docstring)
        warnings.simplefilter("ignore")
        # torch < 2.5 has no `dynamo` flag: the TorchScript exporter is its only one
        legacy = (
            {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        )
        try:
            torch.onnx.export(
                wrapper, (cat, num), str(path), input_names=["cat", "num"], output_names=names,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, **legacy,
            )  # fmt: skip
        except Exception as e:  # an operator the exporter cannot express (e.g. a user's trunk)
            raise UserError(
                f"cannot export this model to ONNX (opset {opset}): {str(e).splitlines()[0]}"
            ) from None
    graph = onnx.load(str(path))
    meta = {
        "hydranet.version": hydranet.__version__,
        META_TASKS: json.dumps([{"name": t.name, "kind": t.kind} for t in tasks]),
        "hydranet.inputs": "cat: int64 [B, C] categorical indices; num: float32 [B, N] scaled numeric features "
        "(both from hydranet's Preprocessor.transform; preprocessing is not in this graph)",
    }
    if source is not None:
        meta[META_PREPROCESSOR] = file_sha256(source / "preprocessor.json")
        meta["hydranet.source_weights_sha256"] = file_sha256(source / "model.safetensors")
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    graph.producer_name = "hydranet"
    onnx.save(graph, str(path))


def parity(run, onnx_path: Path, table: pa.Table) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per task over the table's rows."""
    cat, num = run.preprocessor.transform(table)
    ref = run.predict_arrays(table)
    got = _onnx_predict(onnx_path, run.tasks, cat, num)
    return {
        t.name: float(np.max(np.abs(got[t.name].astype(np.float64) - ref[t.name])))
        for t in run.tasks
    }


def _onnx_predict(
    path: Path, tasks: list[Task], cat: torch.Tensor, num: torch.Tensor, batch_rows: int = 65_536
) -> dict[str, np.ndarray]:
    backend = OnnxBackend(path, tasks)
    parts = [
        backend.forward(cat[s : s + batch_rows], num[s : s + batch_rows])
        for s in range(0, cat.shape[0], batch_rows)
    ]
    return {t.name: np.concatenate([p[t.name] for p in parts]) for t in tasks}


def evaluation_table(spec: Spec, labels: bool = False) -> tuple[str, pa.Table]:
    """The run's test split (validation when it has none): its name and rows."""
    from hydranet.data.sources import load_splits, read_table

    data = spec.data
    columns = list(data.numeric) + list(data.categorical)
    if labels:
        columns += [c for t in spec.tasks for c in t.label_columns if c not in columns]
    if data.test:
        return "test", read_table(data.test, data.format, columns)
    if data.validation and not data.test_fraction:
        return "validation", read_table(data.validation, data.format, columns)
    tables = load_splits(
        data, columns
    )  # carved out of train by test_fraction / validation_fraction
    for split in ("test", "validation"):
        if split in tables:
            return split, tables[split]
    raise UserError(
        "the run's data has neither a test nor a validation split to check the export on"
    )
