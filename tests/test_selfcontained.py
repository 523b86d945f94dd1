"""A run with pretrained encoders (minilm, mobilenet_v2) is self-contained: copied elsewhere
with its pretrained weight files deleted, it loads, predicts, serves (JSON texts, base64
images) and exports to ONNX, since its checkpoint holds every encoder weight and its
``encoders.json`` the transformer's config.

Tiny stand-ins for the real weights: a 2-layer BertModel saved with ``save_pretrained``
and torchvision's MobileNetV2 freshly initialised and saved with ``torch.save``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hydranet
from hydranet import rundir
from hydranet.cli import main
from hydranet.models.build import build_model
from hydranet.run import Run
from hydranet.train.state_io import load_tensors

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from hydranet.serve.app import create_app  # noqa: E402
from hydranet.serve.predictor import Predictor  # noqa: E402
from test_pretrained import WORDS, write_tiny_bert  # noqa: E402
from test_serve_multimodal import assert_same_as_run, photo_table, post  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def word_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts: list[str | None] = [" ".join(rng.choice(WORDS[:8], size=3)) for _ in range(n)]
    texts[0] = None
    price = rng.normal(size=n)
    good = np.array(["good" in (t or "") for t in texts])
    return pa.table({
        "t": texts,
        "price": price,
        "y": good.astype(np.int64),
        "score": price + good,
    })  # fmt: skip


def _file_built_predictions(path, table: pa.Table) -> pa.Table:
    """Predictions of the run's model built as training builds it (the encoders read their
    weights files) before its checkpoint is loaded: what loading did before."""
    run = Run.load(path)
    spec, prep, tasks, states = rundir.read_meta(path)
    model = build_model(spec, prep, tasks, states)
    model.load_state_dict(load_tensors(path / rundir.WEIGHTS)[0])
    run.model = model.eval()
    return run.predict(table)


def _train_and_move(tmp, features, encoders, tables, weights) -> tuple[Run, pa.Table]:
    """Trains, then copies the run elsewhere and deletes the pretrained ``weights``; with
    the test split's predictions from the model built with the weights files there."""
    paths = {}
    for split, table in tables.items():
        paths[split] = str(tmp / f"{split}.parquet")
        pq.write_table(table, paths[split])
    spec = hydranet.Spec.from_dict({
        "data": paths,
        "features": [*features, {"name": "nums", "kind": "numeric", "columns": ["price"]}],
        "tasks": [{"name": "y", "kind": "binary"}, {"name": "score", "kind": "regression"}],
        "model": {"architecture": "shared_bottom", "tower": [4], "params": {"hidden": [8]},
                  "encoders": encoders},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "seed": 0},
    })  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache is not set yet
        mp.setenv("HYDRANET_DATA_DIR", str(tmp / "cache"))
        hydranet.train(spec, tmp / "run", progress=False)
    reference = _file_built_predictions(tmp / "run", tables["test"])
    shutil.copytree(tmp / "run", tmp / "moved")
    shutil.rmtree(tmp / "run")
    if weights.is_dir():
        shutil.rmtree(weights)
    else:
        weights.unlink()
    return tmp / "moved", reference


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sc-minilm")
    bert = tmp / "minilm"
    write_tiny_bert(bert)
    tokenizer = str(bert / "tokenizer.json")
    features = [{"name": "words", "kind": "text", "columns": ["t"],
                 "params": {"tokenizer": tokenizer, "max_tokens": 6}}]  # fmt: skip
    encoders = {"words": {"name": "minilm", "params": {"weights": str(bert)}}}
    test = word_table(24, seed=1)
    tables = {"train": word_table(64, 0), "test": test}
    path, reference = _train_and_move(tmp, features, encoders, tables, bert)
    return path, test, reference


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory):
    from torchvision.models import mobilenet_v2

    tmp = tmp_path_factory.mktemp("sc-mobilenet")
    pth = tmp / "mobilenet_v2.pth"
    torch.manual_seed(0)
    original = mobilenet_v2().state_dict()
    torch.save(original, pth)
    features = [{"name": "pictures", "kind": "image", "columns": ["photo"], "params": {"size": 32}}]
    encoders = {"pictures": {"name": "mobilenet_v2", "params": {"weights": str(pth), "out_dim": 4}}}
    test = photo_table(16, seed=1).rename_columns(["t", "price", "photo", "y", "score"])
    tables = {"train": photo_table(48, seed=0).rename_columns(test.column_names), "test": test}
    path, reference = _train_and_move(tmp, features, encoders, tables, pth)
    return path, test, reference, original


def test_a_minilm_run_loads_without_its_model_directory(minilm_run):
    path, test, reference = minilm_run
    states = json.loads((path / rundir.ENCODERS).read_text())
    assert states["words"]["config"]["hidden_size"] == 16  # the architecture, kept in the run
    got = Run.load(path).predict(test)
    # the transformer built from its config computes what the one read from the directory did
    assert_same_as_run(got.to_pylist(), reference, 0.0)


def test_a_mobilenet_run_loads_without_its_weights_file(mobilenet_run):
    path, test, reference, original = mobilenet_run
    run = Run.load(path)
    assert_same_as_run(run.predict(test).to_pylist(), reference, 0.0)
    backbone = run.model.encoder.encoders["pictures"].backbone.state_dict()
    # the frozen backbone is the pretrained file's, read from the run's own checkpoint
    for name, tensor in original.items():
        if name.startswith("features."):
            torch.testing.assert_close(backbone[name.removeprefix("features.")], tensor)


def _serves_and_exports(path, rows, want, tmp_path, capsys, label: str) -> None:
    """The run served (torch) gives ``want``; exported to ONNX within 1e-4, and served from
    the ONNX graph, too."""
    r = post(create_app(Predictor.load(path)), {"rows": rows})
    assert r.status_code == 200, r.text
    assert_same_as_run(r.json()["predictions"], want, 1e-5)

    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--onnx", str(out), "--tolerance", "1e-4"]) == 0
    diff = float(re.search(r"max abs diff (\S+)", capsys.readouterr().out).group(1))
    print(f"{label} run: onnxruntime vs torch max abs diff {diff:.2e}")
    r = post(create_app(Predictor.load(path, "onnxruntime", onnx=out)), {"rows": rows})
    assert r.status_code == 200, r.text
    assert_same_as_run(r.json()["predictions"], want, 1e-4)


def test_a_minilm_run_serves_texts_and_exports_to_onnx(minilm_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path, test, _ = minilm_run
    rows = test.select(["t", "price"]).to_pylist()
    _serves_and_exports(path, rows, Run.load(path).predict(test), tmp_path, capsys, "minilm")


def test_a_mobilenet_run_serves_base64_images_and_exports_to_onnx(mobilenet_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path, test, _, _ = mobilenet_run
    rows = test.select(["photo", "price"]).to_pylist()
    for row in rows:
        if row["photo"] is not None:
            row["photo"] = base64.b64encode(row["photo"]).decode()
    _serves_and_exports(path, rows, Run.load(path).predict(test), tmp_path, capsys, "mobilenet")


def test_image_group_sources_are_what_each_row_decodes_from(tmp_path):
    from hydranet.features.image import ImageGroup

    group = ImageGroup("pics", ["p"], root=str(tmp_path), size=4)
    paths = pa.chunked_array([pa.array(["a.png", None]), pa.array(["sub/b.png"])])
    assert group.sources(paths) == [str(tmp_path / "a.png"), None, str(tmp_path / "sub/b.png")]
    assert group.sources(pa.array([b"\x89PNG", None], pa.binary())) == [b"\x89PNG", None]
    coded = pa.array(["a.png", "a.png"]).dictionary_encode()
    assert group.sources(coded) == [str(tmp_path / "a.png")] * 2
