"""ONNX export of a run's model, checked against PyTorch before it is kept.

The graph computes what :class:`~hydranet.serve.predictor.TorchBackend`
computes: one input per feature group, named after the group and in group
order, holding the tensor :meth:`Preprocessor.transform` makes for it
(categorical int64 ``[B, C]``, numeric float32 ``[B, width]``, text int64 token ids
``[B, C, T]``, image uint8 ``[B, C, 3, S, S]``); one output per task, named after it,
after the task's activation (sigmoid, softmax, de-standardization); the batch axis of
every input and output is dynamic. Preprocessing is not in the graph: it stays in
Python, from ``preprocessor.json`` (tokenizing texts, decoding and resizing images;
an image encoder's scaling and normalisation of the uint8 pixels is in the graph), whose sha256 the graph records (see
``META_PREPROCESSOR``) so that a server refuses to pair it with another run's.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With
torch 2.13 on CPU both exporters give a graph within 1e-6 of PyTorch for these
models, but the dynamo exporter needs the extra ``onnxscript`` package, takes
about 15 s instead of under 1 s for a small model, and by default puts the
weights in a side file; the TorchScript one writes one self-contained file
with no extra dependency. It is deprecated upstream; the replacement is
``dynamo=True`` with ``dynamic_shapes`` giving each group's input ``{0:
Dim("batch")}`` and ``external_data=False``.
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
from hydranet import rundir
from hydranet.errors import UserError
from hydranet.serve.predictor import (
    META_PREPROCESSOR,
    META_TASKS,
    ONNX_FILE,
    OnnxBackend,
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
    """The model plus each task's output activation: what the ONNX graph computes.

    The exporter passes inputs positionally, so the groups' tensors come in group
    order and are put back into the batch format's ``{group: tensor}`` here.
    """

    def __init__(self, model: nn.Module, tasks: list[Task], groups: list[str]):
        super().__init__()
        self.model, self.tasks, self.groups = model, tasks, groups

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(dict(zip(self.groups, features, strict=True)))
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
    chosen = out is not None
    out = Path(out) if out else run.path / ONNX_FILE
    if not out.parent.is_dir():
        raise UserError(f"--onnx {out}: directory {out.parent} does not exist")
    tmp = out.with_name(out.name + ".tmp")
    try:  # before the export's work; outside the try below, whose cleanup would fail too
        open(tmp, "wb").close()
    except OSError as e:
        where = f"--onnx {out}: directory {out.parent}" if chosen else f"run directory {run.path}"
        raise UserError(
            f"{where} is not writable ({e.strerror or e}); write the model elsewhere with --onnx PATH"
        ) from None
    try:
        split, table = evaluation_table(run.spec, run.preprocessor)
        example = example_features(run.preprocessor, table, split)
        write_onnx(run.model, run.tasks, run.preprocessor, tmp, example, opset, source=run.path)
        diffs = parity(run, tmp, table)
        report = ExportReport(out, tmp.stat().st_size, split, table.num_rows, diffs, tolerance)
        if not report.max_diff <= tolerance:  # also catches NaN
            worst = max(diffs, key=lambda t: diffs[t])
            raise ParityError(
                f"ONNX parity check failed: max abs diff {report.max_diff:.3e} > tolerance {tolerance:.0e} "
                f"(task {worst!r}; per task: {', '.join(f'{t} {d:.2e}' for t, d in diffs.items())}); {out} was not written"
            )
        os.replace(tmp, out)
        if out.parent.resolve() == run.path.resolve() and (run.path / rundir.MANIFEST).is_file():
            rundir.write_manifest(run.path, names=[out.name])  # the run's files now include it
    finally:
        tmp.unlink(missing_ok=True)
    return report


def example_features(
    preprocessor, table: pa.Table, split: str = "evaluation"
) -> dict[str, torch.Tensor]:
    """Two rows of ``table`` as the batch format's features, to trace the export with.

    Real rows rather than zeros: every feature kind knows how to make its own tensor
    from them. Two, not one: a traced size-1 axis could be mistaken for a constant.
    """
    if table.num_rows == 0:
        raise UserError(f"the {split} split has no rows to trace and check the export with")
    rows = table.slice(0, 2) if table.num_rows >= 2 else pa.concat_tables([table, table])
    return preprocessor.transform(rows)


def write_onnx(
    model: nn.Module,
    tasks: list[Task],
    preprocessor,
    path: Path,
    example: dict[str, torch.Tensor],
    opset: int = 17,
    source: Path | None = None,
) -> None:
    """The bare export (no parity check), with hydranet's metadata in the graph.

    ``example``: the batch format's features of two rows (:func:`example_features`),
    one tensor per feature group; the graph's inputs are the groups, in group order.
    """
    import onnx

    groups = list(preprocessor.groups)
    names = [t.name for t in tasks]
    clash = [g for g in groups if g in names]
    if clash:
        raise UserError(
            f"feature group {clash[0]!r} has the name of a task; an ONNX graph's inputs and outputs "
            "need distinct names: rename the group ([[features]] name) to export"
        )
    wrapper = _WithActivations(model, tasks, groups).eval()
    inputs = tuple(example[g] for g in groups)
    axes = {n: {0: "batch"} for n in [*groups, *names]}
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
                wrapper, inputs, str(path), input_names=groups, output_names=names,
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
        "hydranet.inputs": "; ".join(
            f"{g}: {str(x.dtype).removeprefix('torch.')} [B, {', '.join(map(str, x.shape[1:]))}] "
            f"({preprocessor.groups[g].kind} feature group)"
            for g, x in zip(groups, inputs, strict=True)
        )
        + " (one input per feature group, from hydranet's Preprocessor.transform; preprocessing is not in this graph)",
    }
    if source is not None:
        meta[META_PREPROCESSOR] = rundir.file_digest(source / "preprocessor.json")
        meta["hydranet.source_weights_sha256"] = rundir.file_digest(source / "model.safetensors")
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    graph.producer_name = "hydranet"
    onnx.save(graph, str(path))


def parity(run, onnx_path: Path, table: pa.Table) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per task over the table's rows."""
    ref = run.predict_arrays(table)
    got = _onnx_predict(onnx_path, run.tasks, run.preprocessor.transform(table))
    return {
        t.name: float(np.max(np.abs(got[t.name].astype(np.float64) - ref[t.name])))
        for t in run.tasks
    }


def _onnx_predict(
    path: Path, tasks: list[Task], features: dict[str, torch.Tensor], batch_rows: int = 65_536
) -> dict[str, np.ndarray]:
    backend = OnnxBackend(path, tasks, list(features))
    n = next(iter(features.values())).shape[0]
    parts = [
        backend.forward({g: x[s : s + batch_rows] for g, x in features.items()})
        for s in range(0, n, batch_rows)
    ]
    return {t.name: np.concatenate([p[t.name] for p in parts]) for t in tasks}


def evaluation_table(spec: Spec, preprocessor, labels: bool = False) -> tuple[str, pa.Table]:
    """The run's test split (validation when it has none): its name and rows (the
    preprocessor's feature columns, and with ``labels`` the tasks' label columns)."""
    from hydranet.data.sources import load_splits, read_table

    data = spec.data
    columns = preprocessor.columns
    if labels:
        columns += [c for t in spec.tasks for c in t.label_columns if c not in columns]
    if data.test:
        return "test", read_table(data.test, columns=columns, data=data)
    if data.validation and not data.test_fraction:
        return "validation", read_table(data.validation, columns=columns, data=data)
    tables = load_splits(
        data, columns
    )  # carved out of train by test_fraction / validation_fraction
    for split in ("test", "validation"):
        if split in tables:
            return split, tables[split]
    raise UserError(
        "the run's data has neither a test nor a validation split to check the export on"
    )
