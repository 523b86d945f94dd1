"""Text (and image) fields in the HTTP server, batch predict and ONNX export.

A tiny run with a text group and a numeric group: JSON captions get the ids training
made (the predictions equal Run.predict), a value a text field cannot take is a 422
naming its row and field, the exported graph takes the ids and matches PyTorch.
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import hydranet  # noqa: E402
from hydranet.cli import main  # noqa: E402
from hydranet.run import Run  # noqa: E402
from hydranet.serve.app import create_app  # noqa: E402
from hydranet.serve.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["red", "green", "Blue", "cat", "dog", "a", "the", "big", "small", "!", "café"]


def caption_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    captions: list[str | None] = [
        " ".join(rng.choice(WORDS, size=rng.integers(0, 9))) for _ in range(n)
    ]
    captions[0] = None
    price = rng.normal(size=n)
    good = np.array(["cat" in (c or "") for c in captions])
    return pa.table({
        "caption": captions,
        "title": [" ".join(rng.choice(WORDS, size=2)) for _ in range(n)],
        "price": price,
        "liked": (good ^ (rng.random(n) < 0.1)).astype(np.int64),
        "score": price + good,
    })  # fmt: skip


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Run, pa.Table]:
    tmp = tmp_path_factory.mktemp("mm-text")
    paths = {}
    for i, (split, n) in enumerate([("train", 160), ("test", 40)]):
        paths[split] = str(tmp / f"{split}.parquet")
        pq.write_table(caption_table(n, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": "captions",
        "data": paths,
        "features": [
            {"name": "words", "kind": "text", "columns": ["caption", "title"],
             "params": {"max_tokens": 6}},
            {"name": "nums", "kind": "numeric", "columns": ["price"]},
        ],
        "tasks": [{"name": "liked", "kind": "binary"}, {"name": "score", "kind": "regression"}],
        "model": {"architecture": "shared_bottom", "tower": [4],
                  "encoders": {"words": {"name": "bag", "params": {"d_embedding": 4}}}},
        "train": {"epochs": 1, "batch_size": 32, "seed": 0},
    })  # fmt: skip
    run = hydranet.train(spec, tmp / "run", progress=False)
    return run, pq.read_table(paths["test"])


def post(app, body) -> httpx.Response:
    async def go():
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                # json.dumps escapes a lone surrogate as JSON may (httpx's json= cannot send it)
                content = json.dumps(body)
                return await client.post(
                    "/v1/predict", content=content, headers={"content-type": "application/json"}
                )

    return asyncio.run(go())


def rows_of(table: pa.Table, columns: list[str]) -> list[dict]:
    return table.select(columns).to_pylist()


def assert_same_as_run(got: list[dict], want: pa.Table, atol: float) -> None:
    assert len(got) == want.num_rows
    for name in want.column_names:
        np.testing.assert_allclose(
            [r[name] for r in got], want.column(name).to_numpy(), atol=atol, rtol=0
        )


def test_captions_in_json_predict_as_run_predict(text_run):
    run, test = text_run
    app = create_app(Predictor.load(run.path))
    body = rows_of(test, ["caption", "title", "price"])
    body[1]["caption"] = "CAT, unseen-words and more words than max_tokens keeps " * 3
    r = post(app, {"rows": body})
    assert r.status_code == 200, r.text
    assert_same_as_run(r.json()["predictions"], run.predict(pa.Table.from_pylist(body)), 1e-5)


@pytest.mark.parametrize(
    "value, expected",
    [(3, "got a number"), ({"a": 1}, "got an object"), ("bad \ud800", "lone surrogate")],
)
def test_a_value_a_text_field_cannot_take_is_a_422_naming_row_and_field(text_run, value, expected):
    run, test = text_run
    app = create_app(Predictor.load(run.path))
    body = rows_of(test.slice(0, 3), ["caption", "title", "price"])
    body[2]["title"] = value
    r = post(app, {"rows": body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["row"], error["field"]) == (2, "title")
    assert error["message"].startswith("rows[2].title: ") and expected in error["message"]


def test_text_run_exports_to_onnx_with_ids_as_input(text_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    run, test = text_run
    out = tmp_path / "model.onnx"
    assert main(["export", str(run.path), "--onnx", str(out)]) == 0
    diff = float(re.search(r"max abs diff (\S+)", capsys.readouterr().out).group(1))
    assert diff <= 1e-5
    graph = onnx.load(str(out)).graph
    ids = next(i for i in graph.input if i.name == "words")
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in ids.type.tensor_type.shape.dim][1:] == [2, 6]

    # the server on the graph: the same predictions as Run.predict
    app = create_app(Predictor.load(run.path, "onnxruntime", onnx=out))
    r = post(app, {"rows": rows_of(test, ["caption", "title", "price"])})
    assert r.status_code == 200, r.text
    assert_same_as_run(r.json()["predictions"], run.predict(test), 1e-4)
