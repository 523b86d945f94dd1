"""Text (and image) fields in the HTTP server, batch predict and ONNX export.

A tiny run with a text group and a numeric group: JSON captions get the ids training
made (the predictions equal Run.predict), a value a text field cannot take is a 422
naming its row and field, the exported graph takes the ids and matches PyTorch.
"""

from __future__ import annotations

import asyncio
import base64
import io
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


def tiny_run(tmp, name, make_table, sizes, features) -> tuple[Run, pa.Table]:
    """A one-epoch run on generated train/test tables of ``sizes`` rows with these feature
    groups (tasks liked and score; the text group ``words`` on a 4-d bag)."""
    paths = {}
    for i, (split, n) in enumerate(zip(("train", "test"), sizes, strict=True)):
        paths[split] = str(tmp / f"{split}.parquet")
        pq.write_table(make_table(n, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": name,
        "data": paths,
        "features": features,
        "tasks": [{"name": "liked", "kind": "binary"}, {"name": "score", "kind": "regression"}],
        "model": {"architecture": "shared_bottom", "tower": [4],
                  "encoders": {"words": {"name": "bag", "params": {"d_embedding": 4}}}},
        "train": {"epochs": 1, "batch_size": 32, "seed": 0},
    })  # fmt: skip
    # module scope runs before the per-test cache directory is set: set it here too
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYDRANET_DATA_DIR", str(tmp / "cache"))
        run = hydranet.train(spec, tmp / "run", progress=False)
    return run, pq.read_table(paths["test"])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Run, pa.Table]:
    features = [
        {"name": "words", "kind": "text", "columns": ["caption", "title"],
         "params": {"max_tokens": 6}},
        {"name": "nums", "kind": "numeric", "columns": ["price"]},
    ]  # fmt: skip
    return tiny_run(
        tmp_path_factory.mktemp("mm-text"), "captions", caption_table, (160, 40), features
    )


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


# ---------------------------------------------------------------- image + text + numeric


def png(rgb: tuple[int, int, int], seed: int, mode: str = "RGB") -> bytes:
    """A 12x10 picture of about one colour (noise on it), as PNG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, (10, 12, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def photo_table(n: int, seed: int) -> pa.Table:
    """``liked`` hangs on the photo being red rather than blue; captions and price add noise."""
    rng = np.random.default_rng(seed)
    red = rng.random(n) < 0.5
    modes = ["RGB", "RGBA", "L", "P"]
    photos: list[bytes | None] = [
        png((200, 40, 40) if r else (40, 40, 200), seed * 1000 + i, modes[i % 4])
        for i, r in enumerate(red)
    ]
    photos[1] = None  # a white picture, as in training
    text = caption_table(n, seed)
    return (
        text.select(["caption", "price"])
        .append_column("photo", pa.array(photos, pa.binary()))
        .append_column("liked", pa.array(red.astype(np.int64)))
        .append_column("score", pa.array(text["price"].to_numpy() + red))
    )


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> tuple[Run, pa.Table]:
    features = [
        {"name": "pictures", "kind": "image", "columns": ["photo"], "params": {"size": 8}},
        {"name": "words", "kind": "text", "columns": ["caption"], "params": {"max_tokens": 6}},
        {"name": "nums", "kind": "numeric", "columns": ["price"]},
    ]
    return tiny_run(tmp_path_factory.mktemp("mm-photo"), "photos", photo_table, (96, 24), features)


def json_rows(table: pa.Table) -> list[dict]:
    """The table's feature rows as a client sends them: each image as base64 of its bytes."""
    rows = table.select(["photo", "caption", "price"]).to_pylist()
    for r in rows:
        if r["photo"] is not None:
            r["photo"] = base64.b64encode(r["photo"]).decode()
    return rows


def test_server_round_trip_with_images_and_captions_equals_run_predict(photo_run, tmp_path):
    """A real `hydranet serve` process; an undecodable image is a 422 naming row and field."""
    pytest.importorskip("uvicorn")
    from test_serve import Server

    run, test = photo_run
    want = run.predict(test)
    body = json_rows(test)
    body[2]["photo"] = "data:image/png;base64," + body[2]["photo"]  # a data URL works too
    server = Server(run.path, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.post("/v1/predict", json={"rows": body})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert_same_as_run(got, want, 1e-5)
            diff = max(
                float(np.max(np.abs(np.array([g[c] for g in got]) - want[c].to_numpy())))
                for c in want.column_names
            )
            print(f"server vs Run.predict: max abs diff {diff:.2e}")

            for value, expected in [
                (base64.b64encode(b"not an image").decode(), "cannot decode the image"),
                ("@@not base64@@", "not base64"),
                (7, "got a number"),
            ]:
                bad = [dict(body[0]), dict(body[1]), dict(body[3])]
                bad[1]["photo"] = value
                r = client.post("/v1/predict", json={"rows": bad})
                assert r.status_code == 422, r.text
                error = r.json()["error"]
                assert (error["row"], error["field"]) == (1, "photo"), error
                assert (
                    error["message"].startswith("rows[1].photo: ") and expected in error["message"]
                )
            assert client.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0


def test_batch_predict_reads_image_paths_and_marks_undecodable_ones(
    photo_run, tmp_path, monkeypatch
):
    run, test = photo_run
    want = run.predict(test)
    # the photos as files, named relative to the working directory (the group has no root)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    names = []
    for i, data in enumerate(test["photo"].to_pylist()):
        if data is None:
            names.append(None)
            continue
        (tmp_path / "img" / f"{i}.png").write_bytes(data)
        names.append(f"img/{i}.png")
    (tmp_path / "img" / "3.png").write_bytes(b"broken")
    names[4] = "img/missing.png"
    table = test.drop_columns(["photo"]).append_column("photo", pa.array(names, pa.string()))
    pq.write_table(table, tmp_path / "in.parquet")

    assert main(["predict", str(run.path), "in.parquet", "--output", "refused.parquet"]) == 2
    assert not (tmp_path / "refused.parquet").exists()

    argv = ["predict", str(run.path), "in.parquet", "--output", "out.parquet", "--bad-rows", "mark"]
    assert main(argv) == 0
    got = pq.read_table(tmp_path / "out.parquet")
    errors = got["error"].to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [3, 4]
    assert "'photo'" in errors[3] and "img/3.png" in errors[3], errors[3]
    assert "missing.png" in errors[4], errors[4]
    good = [i for i in range(test.num_rows) if i not in (3, 4)]
    for c in want.column_names:
        np.testing.assert_allclose(
            got[c].take(good).to_numpy(), want[c].take(good).to_numpy(), atol=1e-6, rtol=0
        )
    assert got["liked"][3].as_py() is None


def test_multimodal_onnx_export_takes_pixels_and_ids_and_matches_torch(photo_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from hydranet.serve.export import _onnx_predict

    run, test = photo_run
    out = tmp_path / "model.onnx"
    assert main(["export", str(run.path), "--onnx", str(out)]) == 0
    inputs = {i.name: i.type.tensor_type for i in onnx.load(str(out)).graph.input}
    assert inputs["pictures"].elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inputs["pictures"].shape.dim][1:] == [1, 3, 8, 8]
    assert inputs["words"].elem_type == onnx.TensorProto.INT64

    features = run.preprocessor.transform(test)
    got = _onnx_predict(out, run.tasks, features)
    want = run.predict_arrays(test)
    diff = max(float(np.max(np.abs(got[t] - want[t]))) for t in want)
    print(f"onnxruntime vs torch: max abs diff {diff:.2e}")
    assert diff <= 1e-4
