"""ONNX export (parity with PyTorch), int8 compression (size, metric change), batch prediction files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hydranet.cli import main  # noqa: E402
from hydranet.run import Run  # noqa: E402
from hydranet.serve.batch import predict_file  # noqa: E402
from hydranet.serve.predictor import Predictor  # noqa: E402
from test_serve_app import train_tiny_run  # noqa: E402

TASKS = ["click", "value", "kind"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp() / "serve-tiny")


@pytest.fixture(scope="module")
def test_table(tiny_run) -> pa.Table:
    return pq.read_table(tiny_run.parent / "test.parquet")


def _assert_same(got: pa.Table, ref: pa.Table, atol: float) -> None:
    assert got.column_names == ref.column_names and got.num_rows == ref.num_rows
    for name in ref.column_names:
        g, r = got.column(name).to_pylist(), ref.column(name).to_pylist()
        if isinstance(r[0], str):
            assert g == r, name
        else:
            assert np.allclose(np.array(g, dtype=float), np.array(r, dtype=float), atol=atol), name


def test_export_matches_pytorch(tiny_run, tmp_path, test_table, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    diff = float(re.search(r"max abs diff (\S+)", printed).group(1))
    assert diff <= 1e-5 and "test split (200 rows)" in printed and out.is_file()

    import onnx

    graph = onnx.load(str(out))
    assert [i.name for i in graph.graph.input] == ["categorical", "numeric"]  # the groups
    assert [o.name for o in graph.graph.output] == TASKS
    meta = {p.key: p.value for p in graph.metadata_props}
    assert "preprocessing is not in this graph" in meta["hydranet.inputs"]

    onnx_pred = Predictor.load(tiny_run, "onnxruntime", onnx=out)
    ref = Run.load(tiny_run).predict(test_table)
    _assert_same(onnx_pred.predict_table(test_table), ref, atol=1e-5)
    for n in (1, 7):  # the batch axis is dynamic, down to one row
        _assert_same(onnx_pred.predict_table(test_table.slice(0, n)), ref.slice(0, n), atol=1e-5)


def test_export_default_path_and_parity_failure(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["export", str(run), "--tolerance", "1e-12"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "1e-12" in err and "was not written" in err
    assert not (run / "model.onnx").exists() and not list(run.glob("*.tmp"))
    assert main(["export", str(run)]) == 0 and (run / "model.onnx").is_file()
    # served with --backend onnxruntime and no --onnx, RUN/model.onnx is used
    assert Predictor.load(run, "onnxruntime").backend.name == "onnxruntime"
    assert Predictor.load(run).backend.name == "torch"  # auto: safetensors present


def test_onnx_graph_refused_with_another_runs_preprocessor(tiny_run, tmp_path):
    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    prep = json.loads((other / "preprocessor.json").read_text())
    numeric = next(g for g in prep["groups"] if g["kind"] == "numeric")
    numeric["fitted"]["mean_"][0] += 1.0
    (other / "preprocessor.json").write_text(json.dumps(prep))
    from hydranet.errors import UserError
    from hydranet.rundir import write_manifest

    write_manifest(other)  # another run, not a damaged copy of this one

    with pytest.raises(UserError, match="another preprocessor"):
        Predictor.load(other, "onnxruntime", onnx=out)


def test_a_graph_exported_before_feature_groups_still_serves(tiny_run, tmp_path, test_table):
    """Graphs (and int8 runs, which cannot be re-exported) written before feature groups
    have the inputs ``cat`` and ``num``: they feed the shortcut's two groups."""
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 0
    graph = onnx.load(str(out))
    old = {"categorical": "cat", "numeric": "num"}
    for i in graph.graph.input:
        i.name = old[i.name]
    for node in graph.graph.node:
        node.input[:] = [old.get(x, x) for x in node.input]
    onnx.save(graph, str(out))

    pred = Predictor.load(tiny_run, "onnxruntime", onnx=out)
    assert pred.backend.inputs == ["cat", "num"]
    _assert_same(pred.predict_table(test_table), Run.load(tiny_run).predict(test_table), atol=1e-5)


def test_compress_int8_writes_a_servable_run_and_reports_metric_change(
    tiny_run, tmp_path, test_table, capsys
):
    out = tmp_path / "int8"
    assert main(["compress", str(tiny_run), "--int8", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == [
        "compress.json",
        "encoders.json",
        "final_metrics.json",
        "manifest.json",
        "model.onnx",
        "preprocessor.json",
        "spec.json",
        "tasks.json",
    ]
    assert json.loads((out / "compress.json").read_text()) == report
    sizes = report["size_bytes"]
    assert (
        sizes["onnx_int8"] > 0
        and sizes["source_safetensors"] == (tiny_run / "model.safetensors").stat().st_size
    )
    change = report["metrics"]["change"]
    assert set(change) == set(TASKS) and set(change["click"]) == {"auc", "logloss", "accuracy"}
    for task, metrics in change.items():
        for name, delta in metrics.items():
            before, after = (
                report["metrics"]["fp32"][task][name],
                report["metrics"]["int8"][task][name],
            )
            assert np.isclose(after - before, delta) and abs(delta) < 0.1, (task, name, delta)
    assert report["metrics"]["fp32"] == Run.load(tiny_run).evaluate("test")

    # the compressed run predicts with onnxruntime, close to the fp32 model
    pred = Predictor.load(out)
    assert pred.backend.name == "onnxruntime"
    got, ref = pred.predict_table(test_table), Run.load(tiny_run).predict(test_table)
    assert np.abs(got.column("click").to_numpy() - ref.column("click").to_numpy()).max() < 0.05
    assert predict_file(out, str(tiny_run.parent / "test.parquet"), tmp_path / "p.parquet") == 200

    from hydranet.errors import UserError

    with pytest.raises(UserError, match="only an ONNX model"):
        Predictor.load(out, "torch")
    again = ["compress", str(out), "--int8", "--out", str(tmp_path / "again")]
    assert main(again) == 2  # already compressed
    assert main(["compress", str(tiny_run), "--out", str(tmp_path / "none")]) == 2  # no method
    assert main(["compress", str(tiny_run), "--int8", "--out", str(out)]) == 2  # not empty


def test_int8_shrinks_a_model_with_real_layers(tiny_run, tmp_path, test_table):
    """The tiny run is too small for int8 to pay off (its report says so); a wider MMoE shrinks."""
    from hydranet.models.build import build_model
    from hydranet.serve.compress import quantize_int8
    from hydranet.serve.export import example_features, write_onnx

    run = Run.load(tiny_run)
    spec = run.spec.model_copy(
        update={
            "model": run.spec.model.model_copy(
                update={"params": {"num_experts": 8, "expert_hidden": [128]}, "tower": [64]}
            )
        }
    )
    model = build_model(spec, run.preprocessor, run.tasks).eval()
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    example = example_features(run.preprocessor, test_table)
    write_onnx(model, run.tasks, run.preprocessor, fp32, example)
    quantize_int8(fp32, int8)
    assert int8.stat().st_size < 0.45 * fp32.stat().st_size


def test_predict_file_streams_chunks_in_order(tiny_run, tmp_path, test_table):
    """More rows than chunk_rows: one chunk at a time, output rows in input order (CSV and Parquet)."""
    src = tmp_path / "in.parquet"
    big = pa.concat_tables([test_table] * 3)
    pq.write_table(big, src, row_group_size=100)
    ref = Run.load(tiny_run).predict(big)

    csv_out = tmp_path / "out.csv"
    assert predict_file(tiny_run, str(src), csv_out, chunk_rows=64, progress=True) == 600
    got = pacsv.read_csv(csv_out)
    assert got.column_names == ["click", "value", "kind", "kind_probs"] and got.num_rows == 600
    probs = np.array([json.loads(s) for s in got.column("kind_probs").to_pylist()])
    assert np.allclose(probs, np.array(ref.column("kind_probs").to_pylist()), atol=1e-6)
    assert got.column("kind").to_pylist() == ref.column("kind").to_pylist()
    assert np.allclose(got.column("click").to_numpy(), ref.column("click").to_numpy(), atol=1e-6)

    pq_out = tmp_path / "out.parquet"
    assert (
        predict_file(tiny_run, str(src), pq_out, keep=["size"], chunk_rows=37, progress=False)
        == 600
    )
    got = pq.read_table(pq_out)
    assert got.column("size").to_pylist() == big.column("size").to_pylist()
    _assert_same(got.drop(["size"]), ref, atol=1e-6)


def test_several_groups_of_a_kind_train_export_and_serve_alike(tmp_path):
    """Two categorical groups and a numeric one between them (``[[features]]``): the graph has
    one input per group, in group order, and torch, onnxruntime and the HTTP API agree."""
    import asyncio

    import hydranet
    from conftest import make_table
    from hydranet.serve.app import Settings, create_app
    from hydranet.serve.export import export_onnx
    from test_serve_app import _with_app, good_rows

    paths = {}
    for i, split in enumerate(["train", "validation", "test"]):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(make_table(400, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": "groups",
        "data": paths,
        "features": [
            {"name": "colour", "kind": "categorical", "columns": ["color"]},
            {"name": "measures", "kind": "numeric", "columns": ["a", "b", "c"], "params": {"log1p": ["c"]}},
            {"name": "sizing", "kind": "categorical", "columns": ["size"], "params": {"min_count": 2}},
        ],
        "tasks": [{"name": "click", "kind": "binary"}, {"name": "value", "kind": "regression"},
                  {"name": "kind", "kind": "multiclass"}],
        "model": {"architecture": "mmoe", "embedding_dim": 3, "tower": [8]},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 0},
    })  # fmt: skip
    run_dir = hydranet.train(spec, tmp_path / "run", progress=False).path
    run = Run.load(run_dir)
    assert list(run.preprocessor.groups) == ["colour", "measures", "sizing"]

    report = export_onnx(run_dir)
    assert report.max_diff <= 1e-5
    import onnx

    graph = onnx.load(str(run_dir / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["colour", "measures", "sizing"]
    types = [i.type.tensor_type.elem_type for i in graph.graph.input]
    assert types == [onnx.TensorProto.INT64, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    inputs = {p.key: p.value for p in graph.metadata_props}["hydranet.inputs"]
    assert inputs.startswith(
        "colour: int64 [B, 1] (categorical feature group); measures: float32 [B, 3]"
    )

    # missing values, unseen categories (typed: the torch reference reads an Arrow table)
    typed = good_rows(25, seed=5, mixed=False)
    ref = run.predict(pa.Table.from_pylist(typed))
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor.load(run_dir, backend)
        assert predictor.backend.name == backend
        _assert_same(predictor.predict_table(pa.Table.from_pylist(typed)), ref, atol=1e-5)

        app = create_app(predictor, Settings())

        async def ask(client):
            meta = (await client.get("/v1/metadata")).json()
            return meta, await client.post("/v1/predict", json={"rows": typed})

        meta, r = asyncio.run(_with_app(app, ask))
        assert [(f["name"], f["group"]) for f in meta["features"]] == [
            ("color", "colour"), ("a", "measures"), ("b", "measures"), ("c", "measures"),
            ("size", "sizing"),
        ]  # fmt: skip
        assert r.status_code == 200, r.text
        got = pa.Table.from_pylist(r.json()["predictions"]).select(ref.column_names)
        _assert_same(got, ref, atol=1e-5)
