"""int8 compression of a run: ONNX Runtime dynamic quantization of the exported graph.

Why ONNX Runtime and not ``torch.ao.quantization.quantize_dynamic``: PyTorch's
dynamic quantization replaces ``nn.Linear`` modules only, and hydranet's
experts, gates and towers are :class:`~hydranet.models.blocks.BatchedLinear`
(one batched matmul for all groups), which it does not cover. On the census
MMoE not one parameter lives in an ``nn.Linear``: the "quantized" model is
the fp32 model. Its packed parameters also cannot be stored in safetensors,
so the result could not be saved without pickle. ONNX Runtime quantizes ops in
the exported graph instead: ``MatMul`` weights (the exporter writes ``Gemm``
for ``addmm``, which dynamic quantization skips, so ``Gemm`` nodes with
constant weights are first rewritten as ``MatMul`` + ``Add``) and the
embedding table's ``Gather``, all to int8 with one scale per tensor;
activations are quantized on the fly. The census MMoE goes from 92.5 KiB
(fp32 ONNX; 84.6 KiB safetensors) to 38 KiB with test AUC changes below 1e-4.

The new run directory holds ``spec.json``, ``preprocessor.json``,
``tasks.json`` and ``encoders.json`` (copied unchanged), the int8 ``model.onnx``,
``final_metrics.json`` (the int8 model's metrics) and ``compress.json`` (sizes
and the metric change per task). No safetensors, no pickle: ``hydranet serve``
and ``hydranet predict`` use onnxruntime for it automatically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydranet import rundir
from hydranet.errors import UserError
from hydranet.serve.export import (
    ParityError,
    _onnx_predict,
    evaluation_table,
    example_features,
    parity,
    write_onnx,
)
from hydranet.serve.predictor import ONNX_FILE

REPORT = "compress.json"
METHOD = "onnxruntime dynamic quantization, int8 weights of MatMul and Gather (embedding) ops"


def compress_int8(
    run_dir: str | Path, out: str | Path, *, tolerance: float = 1e-5
) -> dict[str, Any]:
    """Write an int8 copy of the run to ``out``; returns the report also saved as ``compress.json``."""
    from hydranet.evaluate.inference import split_metrics
    from hydranet.run import Run

    src, out = Path(run_dir), Path(out)
    if not (src / rundir.WEIGHTS).exists() and (src / ONNX_FILE).exists():
        raise UserError(
            f"{src} is already compressed (it has {ONNX_FILE} and no {rundir.WEIGHTS}); compress the original run"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty directory; choose a new one")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    run = Run.load(src)
    split, table = evaluation_table(run.spec, run.preprocessor, labels=True)
    example = example_features(run.preprocessor, table, split)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fp32, int8 = work / "fp32.onnx", work / ONNX_FILE
        write_onnx(run.model, run.tasks, run.preprocessor, fp32, example, source=src)
        diffs = parity(run, fp32, table)
        if not max(diffs.values()) <= tolerance:
            raise ParityError(
                f"the fp32 ONNX export differs from PyTorch by {max(diffs.values()):.3e} (> {tolerance:.0e}); not compressing"
            )
        quantize_int8(fp32, int8)
        labels, masks = {}, {}
        for t in run.tasks:
            labels[t.name], masks[t.name] = t.encode(table)
        features = run.preprocessor.transform(table)
        before = split_metrics(run.tasks, run.predict_arrays(table), labels, masks)
        after = split_metrics(run.tasks, _onnx_predict(int8, run.tasks, features), labels, masks)
        report = {
            "method": METHOD,
            "source": str(src),
            "split": split,
            "rows": table.num_rows,
            "size_bytes": {
                "source_safetensors": (src / rundir.WEIGHTS).stat().st_size,
                "onnx_fp32": fp32.stat().st_size,
                "onnx_int8": int8.stat().st_size,
            },
            "model_sha256": {
                "source_safetensors": rundir.file_digest(src / rundir.WEIGHTS),
                "onnx_int8": rundir.file_digest(int8),
            },
            "metrics": {"fp32": before, "int8": after, "change": _change(before, after)},
        }
        if int8.stat().st_size >= (src / rundir.WEIGHTS).stat().st_size:
            report["note"] = (
                "the int8 graph is not smaller: this model is too small for the quantization overhead to pay off"
            )
        fp32.unlink()
        for name in (rundir.SPEC, rundir.PREPROCESSOR, rundir.TASKS, rundir.ENCODERS):
            if name == rundir.ENCODERS and not (src / name).is_file():
                continue  # a run written before encoders.json existed
            # byte for byte: the graph records the preprocessor's hash
            shutil.copyfile(src / name, work / name)
        rundir.write_json(work / rundir.FINAL, {split: after})
        rundir.write_json(work / REPORT, report)
        rundir.write_manifest(work)
        os.chmod(work, 0o755)  # mkdtemp makes it private
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace it everywhere
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def quantize_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rewritten = dst.with_name(dst.stem + ".matmul.onnx")
    onnx.save(gemm_as_matmul(onnx.load(str(src))), str(rewritten))
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice per call
    try:
        quantize_dynamic(
            str(rewritten),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gather"],
        )
    finally:
        logging.getLogger().setLevel(quiet)
        rewritten.unlink(missing_ok=True)


def gemm_as_matmul(model):
    """``Gemm(A, B, C)`` with a constant ``B`` (alpha = beta = 1, A not transposed) as ``MatMul(A, B') + C``.

    Same arithmetic; ONNX Runtime's dynamic quantization covers ``MatMul`` but not ``Gemm``.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            inits[weight].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), weight)
            )
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = node.output[0] + "/matmul" if has_bias else node.output[0]
        nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], weight], [product], name=f"{node.name}/MatMul"
            )
        )
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}/Add"
                )
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _change(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    return {t: {m: after[t][m] - v for m, v in ms.items()} for t, ms in before.items()}


def format_report(report: dict[str, Any]) -> str:
    sizes = report["size_bytes"]
    ratio = sizes["onnx_int8"] / sizes["source_safetensors"]
    lines = [
        f"int8 run written ({report['method']})",
        f"size: {sizes['source_safetensors'] / 1024:,.1f} KiB (model.safetensors; fp32 ONNX {sizes['onnx_fp32'] / 1024:,.1f} KiB)"
        f" -> {sizes['onnx_int8'] / 1024:,.1f} KiB (model.onnx, int8): {ratio:.2f}x",
        f"{report['split']} split, {report['rows']:,} rows:",
        f"  {'task':<16} {'metric':<10} {'fp32':>10} {'int8':>10} {'change':>10}",
    ]
    m = report["metrics"]
    for task, metrics in m["fp32"].items():
        for name, v in metrics.items():
            lines.append(
                f"  {task:<16} {name:<10} {v:>10.5f} {m['int8'][task][name]:>10.5f} {m['change'][task][name]:>+10.5f}"
            )
    if "note" in report:
        lines.append(f"note: {report['note']}")
    return "\n".join(lines)
