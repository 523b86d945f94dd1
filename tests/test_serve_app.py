"""The HTTP API in process (httpx.ASGITransport, lifespan run by hand): validation, limits, batching.

The fuzz test sends 2,000 generated requests, good and bad, to the in-process
app: no 5xx, and every bad one a 4xx whose JSON names the field (and the row).
tests/test_serve.py replays a subset against the real server process.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from hydranet.cli import main  # noqa: E402
from hydranet.features import NumericGroup  # noqa: E402
from hydranet.models.encoders import Encoder  # noqa: E402
from hydranet.run import Run  # noqa: E402
from hydranet.serve.app import Settings, _render, create_app  # noqa: E402
from hydranet.serve.metrics import Metrics  # noqa: E402
from hydranet.serve.predictor import Predictor  # noqa: E402

NUMERIC, CATEGORICAL = ["a", "b", "c"], ["color", "size"]


def train_tiny_run(base: Path) -> Path:
    """A 2-epoch MMoE on the conftest table (binary, regression, multiclass) under ``base``, once."""
    import pyarrow.parquet as pq

    import hydranet
    from conftest import SPEC_TEMPLATE, make_table

    run = base / "run"
    if (run / "model.safetensors").exists():  # trained earlier in this session
        return run
    base.mkdir(exist_ok=True)
    paths = {}
    for i, (split, n) in enumerate([("train", 600), ("validation", 200), ("test", 200)]):
        paths[split] = base / f"{split}.parquet"
        pq.write_table(make_table(n, seed=i), paths[split])
    text = SPEC_TEMPLATE.format(
        arch="mmoe", epochs=2, checkpoint_every=0, **{k: str(v) for k, v in paths.items()}
    )
    (base / "spec.toml").write_text(text)
    hydranet.train(hydranet.Spec.load(str(base / "spec.toml")), run, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp() / "serve-tiny")


def good_rows(n: int, seed: int = 0, mixed: bool = True) -> list[dict]:
    """Valid rows; ``mixed``: values of several JSON types per column (no Arrow table can hold those)."""
    rng = random.Random(seed)
    numbers = [None, 0, -0.0, 2.5e3, -3] + ([True, 7] if mixed else [])
    colors = ["red", "green", "blue", "black", "purple", "", "ünïcode", None] + (
        [3, 2.5, True] if mixed else []
    )
    sizes = [0, 1, 2, 3, 4, 17, None, -1] + (["3", 2.0] if mixed else [])

    def number():
        return rng.gauss(0, 1) if rng.random() < 0.6 else rng.choice(numbers)

    return [
        {
            "a": number(),
            "b": number(),
            "c": number(),
            "color": rng.choice(colors),
            "size": rng.choice(sizes),
        }
        for _ in range(n)
    ]


@dataclass
class Case:
    name: str
    body: bytes
    status: set[int] = default(default_factory=lambda: {200})
    field: str | None = None
    row: int | None = None
    rows: int = 0
    headers: dict[str, str] = default(default_factory=lambda: {"content-type": "application/json"})
    chunked: bool = False

    def content(self, asynchronous: bool = False):
        """The body; chunked (no Content-Length) as an iterator of 4 KiB pieces."""
        if not self.chunked:
            return self.body
        pieces = [self.body[i : i + 4096] for i in range(0, len(self.body), 4096)]

        async def agen():
            for p in pieces:
                yield p

        return agen() if asynchronous else iter(pieces)

    def check(self, status: int, content: bytes) -> None:
        assert status < 500, (self.name, status, content[:300])
        assert status in self.status, (self.name, status, content[:300])
        payload = json.loads(content)
        if status == 200:
            preds = payload["predictions"]
            assert len(preds) == self.rows and all(
                set(p) == {"click", "value", "kind", "kind_probs"} for p in preds
            ), self.name
            return
        err = payload["error"]
        assert err["status"] == status and err["field"] == self.field, (self.name, err)
        if self.field is not None:
            assert self.field in err["message"], (self.name, err)
        if self.row is not None:
            assert err["row"] == self.row and f"rows[{self.row}]" in err["message"], (
                self.name,
                err,
            )


def fuzz_cases(seed: int, n: int, max_rows: int, max_body: int) -> list[Case]:
    """``n`` requests, about a third good, the rest each broken in one way (the only problem in it)."""
    rng = random.Random(seed)

    def body(obj) -> bytes:
        return json.dumps(obj).encode()  # NaN and Infinity become the non-standard JSON tokens

    def one(i: int) -> Case:
        k = rng.randint(1, 12)
        rows = good_rows(k, seed=seed * 100_003 + i)
        r = rng.randrange(k)
        f = rng.choice(NUMERIC + CATEGORICAL)
        kind = rng.choice(
            ["good"] * 8 + ["wrong_type", "nan", "missing", "extra", "huge", "float32", "deep_value", "row_type", "surrogate",
             "empty", "rows_type", "body_type", "top_extra", "no_rows", "deep_body", "malformed", "utf8", "digits",
             "oversized", "chunked", "content_type", "too_many"]
        )  # fmt: skip
        if kind == "good":
            return Case("good", body({"rows": rows}), rows=k, chunked=rng.random() < 0.1)
        if kind == "wrong_type":
            bad = (
                ["x", "1.5", [], {}, [1, 2], {"v": 1}]
                if f in NUMERIC
                else [[], {}, ["red"], {"k": "v"}]
            )
            rows[r][f] = rng.choice(bad)
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "nan":
            rows[r][f] = rng.choice([float("nan"), float("inf"), float("-inf")])
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "missing":
            del rows[r][f]
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "extra":
            name = rng.choice(["zz", "A", "colour", "a ", "x" * 300])
            rows[r][name] = 1
            return Case(
                kind, body({"rows": rows}), {422}, name if len(name) <= 80 else name[:77] + "...", r
            )
        if kind == "huge":  # beyond float64: 1e400 parses to inf, 10**400 does not fit
            f = rng.choice(NUMERIC)
            rows[r][f] = "@@"
            text = body({"rows": rows}).replace(
                b'"@@"', rng.choice([b"1e400", b"-2E+999", b"1" + b"0" * 400])
            )
            return Case(kind, text, {422}, f, r)
        if kind == "float32":  # finite, but beyond float32 once scaled
            f = rng.choice(NUMERIC)
            rows[r][f] = rng.choice([1e300, -1e250, 1e39])
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "deep_value":
            rows[r][f] = _nest(rng.randint(2, 200))
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "row_type":
            rows[r] = rng.choice([3, "row", None, [1, 2, 3], True])
            return Case(kind, body({"rows": rows}), {422}, None, r)
        if kind == "surrogate":
            f = rng.choice(CATEGORICAL)
            rows[r][f] = "ab\ud800"
            return Case(kind, body({"rows": rows}), {422}, f, r)
        if kind == "empty":
            return Case(kind, b'{"rows": []}', {422}, "rows")
        if kind == "rows_type":
            return Case(
                kind, body({"rows": rng.choice([{}, "x", None, 3, {"a": 1}])}), {422}, "rows"
            )
        if kind == "body_type":
            return Case(kind, body(rng.choice([[], "x", 3, None, [rows[0]]])), {422}, "body")
        if kind == "top_extra":
            return Case(kind, body({"rows": rows, "model": "other"}), {422}, "model")
        if kind == "no_rows":
            return Case(kind, body({"data": rows}), {422}, "data")
        if kind == "deep_body":
            depth = rng.randint(2_000, 20_000)
            return Case(kind, b"[" * depth + b"]" * depth, {400}, "body")
        if kind == "malformed":
            good = body({"rows": rows})
            bad = rng.choice(
                [
                    good[: rng.randrange(1, len(good))],
                    b"{rows: 1}",
                    b"",
                    b"\x00\x01garbage",
                    good + b"}",
                    b"{'rows': []}",
                ]
            )
            return Case(kind, bad, {400}, "body")
        if kind == "utf8":
            return Case(kind, b'{"rows": [{"color": "\xff\xfe"}]}', {400}, "body")
        if kind == "digits":  # more digits than Python converts
            return Case(kind, b'{"rows": [{"a": 1' + b"0" * 5000 + b"}]}", {400}, "body")
        if kind in ("oversized", "chunked"):
            padded = body({"rows": rows}) + b" " * (max_body + rng.randint(1, 3 * max_body))
            return Case(kind, padded, {413}, "body", chunked=kind == "chunked")
        if kind == "content_type":
            headers = rng.choice(
                [
                    {"content-type": "text/plain"},
                    {"content-type": "application/x-www-form-urlencoded"},
                    {},
                    {"content-type": "application/jsonx"},
                ]
            )
            return Case(kind, body({"rows": rows}), {415}, "content-type", headers=headers)
        assert kind == "too_many"
        many = good_rows(max_rows + rng.randint(1, 50), seed=i)
        return Case(kind, body({"rows": many}), {413}, "rows")

    return [one(i) for i in range(n)]


def _nest(depth: int):
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


async def _with_app(app, fn):
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hydranet.test", timeout=30
        ) as client:
            return await fn(client)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.load(tiny_run)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """As ``hydranet serve`` runs (--threads 1): tiny forward passes gain nothing from more
    threads, and on a busy 2-core machine OpenMP barriers make them 5-10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fuzz_in_process(predictor):
    """2,000 generated requests to the in-process app: zero 5xx, every bad one named."""
    settings = Settings(max_body_bytes=65536, max_rows=100, batch_wait_ms=1)
    app = create_app(predictor, settings)
    cases = fuzz_cases(seed=3, n=2000, max_rows=100, max_body=65536)
    kinds = {c.name for c in cases}
    assert len(kinds) >= 20 and sum(c.name == "good" for c in cases) > 400

    async def send(client, case):
        r = await client.post(
            "/v1/predict", content=case.content(asynchronous=True), headers=case.headers
        )
        case.check(r.status_code, r.content)

    async def send_all(client):
        for start in range(0, len(cases), 16):  # 16 at a time: good ones share forward passes
            await asyncio.gather(*(send(client, c) for c in cases[start : start + 16]))
        return (await client.get("/metrics")).text

    metrics = asyncio.run(_with_app(app, send_all))
    assert 'code="500"' not in metrics


@pytest.mark.parametrize(
    "wait_ms, inline_rows",
    [(50, 256), (50, 0), (0, 256)],
    ids=["window-inline", "window-thread", "no-wait"],
)
def test_concurrent_requests_share_forward_passes(predictor, tiny_run, wait_ms, inline_rows):
    # a 50 ms window, its passes on the event loop or in the worker thread; and the
    # default (no window): requests that arrive together still share a pass
    app = create_app(predictor, Settings(batch_wait_ms=wait_ms))
    app.batcher.inline_rows = inline_rows
    batches: list[tuple[int, int]] = []
    observe = app.metrics.observe_batch
    app.batcher.on_batch = lambda rows, requests: (
        batches.append((rows, requests)),
        observe(rows, requests),
    )
    requests = [good_rows(1 + i % 3, seed=i, mixed=False) for i in range(24)]

    async def burst(client):
        rs = await asyncio.gather(
            *(client.post("/v1/predict", json={"rows": rows}) for rows in requests)
        )
        return [r.json()["predictions"] for r in rs]

    answers = asyncio.run(_with_app(app, burst))
    assert sum(r for r, _ in batches) == sum(map(len, requests))
    assert len(batches) < len(requests) // 2  # grouped, not one forward pass per request
    run = Run.load(tiny_run)
    for rows, got in zip(requests, answers, strict=True):
        ref = run.predict(pa.Table.from_pylist(rows))
        assert np.allclose([g["value"] for g in got], ref.column("value").to_numpy(), atol=1e-6)
        assert [g["kind"] for g in got] == ref.column("kind").to_pylist()


def test_a_float32_overflow_fails_only_its_own_request_in_a_shared_pass(predictor, tiny_run):
    # a value finite in float64 but beyond float32 once scaled is found after the requests
    # were grouped into one pass: its request gets the 422, the others their predictions
    app = create_app(predictor, Settings(batch_wait_ms=50))
    batches: list[int] = []
    app.batcher.on_batch = lambda rows, requests: batches.append(requests)
    requests = [good_rows(2, seed=i, mixed=False) for i in range(6)]
    requests[3][1]["b"] = 1e300

    async def burst(client):
        return await asyncio.gather(
            *(client.post("/v1/predict", json={"rows": rows}) for rows in requests)
        )

    answers = asyncio.run(_with_app(app, burst))
    assert max(batches) > 1  # the bad request shared its pass
    bad = answers[3].json()["error"]
    assert (answers[3].status_code, bad["row"], bad["field"]) == (422, 1, "b")
    run = Run.load(tiny_run)
    for i, (rows, r) in enumerate(zip(requests, answers, strict=True)):
        if i == 3:
            continue
        assert r.status_code == 200
        ref = run.predict(pa.Table.from_pylist(rows)).column("value").to_numpy()
        assert np.allclose([g["value"] for g in r.json()["predictions"]], ref, atol=1e-6)


def test_errors_for_paths_methods_and_limits(predictor):
    app = create_app(predictor, Settings(max_body_bytes=1000, max_rows=3))

    async def probe(client):
        out = {}
        out["404"] = await client.get("/v2/predict")
        out["405"] = await client.get("/v1/predict")
        out["413"] = await client.post("/v1/predict", json={"rows": good_rows(30)})
        out["rows"] = await client.post("/v1/predict", json={"rows": good_rows(4)})
        out["ok"] = await client.post(
            "/v1/predict",
            json={"rows": good_rows(3)},
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
        return out

    out = asyncio.run(_with_app(app, probe))
    for code in ("404", "405"):
        err = out[code].json()["error"]
        assert (
            out[code].status_code == int(code)
            and err["field"] == "path"
            and "POST /v1/predict" in err["message"]
        )
    assert out["413"].status_code == 413 and "1,000 bytes" in out["413"].json()["error"]["message"]
    assert out["rows"].status_code == 413 and out["rows"].json()["error"]["field"] == "rows"
    assert out["ok"].status_code == 200


def test_messages_name_row_and_field(predictor):
    app = create_app(predictor)
    rows = good_rows(5, seed=2)
    rows[3]["b"] = "seven"
    rows[4]["size"] = {"v": 1}

    async def send(client):
        return await client.post("/v1/predict", json={"rows": rows})

    err = asyncio.run(_with_app(app, send)).json()["error"]
    assert (
        err["message"].startswith("rows[3].b: expected a number or null")
        and "1 more" in err["message"]
    )
    assert [(p["row"], p["field"]) for p in err["problems"]] == [(3, "b"), (4, "size")]


def test_every_problem_is_counted_and_values_are_shown_plainly(predictor):
    # 45 bad values in two groups: the message counts all of them, the problems list holds
    # the ten of the earliest rows, and each entry's message does not repeat row and field
    app = create_app(predictor, Settings(max_rows=100))
    rows = good_rows(30, seed=4, mixed=False)
    for r in range(15):
        rows[r]["color"] = [r]
    for r in range(30):
        rows[r]["c"] = "x"
    overflow = good_rows(3, seed=5, mixed=False)
    overflow[1]["b"] = 1e300
    overflow[2]["a"] = -1e250

    async def send(client):
        return [
            (await client.post("/v1/predict", json={"rows": body})).json()["error"]
            for body in (rows, overflow)
        ]

    many, big = asyncio.run(_with_app(app, send))
    assert many["message"].startswith("rows[0].color: expected a string, a number or null")
    assert many["message"].endswith("(and 44 more problem(s))")
    assert [p["row"] for p in many["problems"]] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert big["message"] == (
        "rows[1].b: 1e+300 is too large for the model (beyond float32 once scaled) "
        "(and 1 more problem(s))"
    )
    assert [(p["row"], p["field"], p["message"]) for p in big["problems"]] == [
        (1, "b", "1e+300 is too large for the model (beyond float32 once scaled)"),
        (2, "a", "-1e+250 is too large for the model (beyond float32 once scaled)"),
    ]


def test_non_finite_predictions_render_as_null(predictor):
    outputs = {
        "click": np.array([np.nan], np.float32),
        "value": np.array([np.inf], np.float32),
        "kind": np.array([[np.nan, 0.5, 0.5]], np.float32),
    }
    row = json.loads(_render(predictor, outputs))["predictions"][0]
    assert row["click"] is None and row["value"] is None and row["kind_probs"] == [None, 0.5, 0.5]


def test_api_key_from_settings(predictor):
    app = create_app(predictor, Settings(api_key="k" * 40))

    async def send(client):
        body = {"rows": good_rows(1)}
        return [
            (await client.post("/v1/predict", json=body)).status_code,
            (
                await client.post(
                    "/v1/predict", json=body, headers={"authorization": "Bearer " + "k" * 39}
                )
            ).status_code,
            (
                await client.post(
                    "/v1/predict", json=body, headers={"authorization": "Bearer " + "k" * 40}
                )
            ).status_code,
            (
                await client.post(
                    "/v1/predict",
                    json=body,
                    headers={"x-api-key": ("k" * 40 + "\u00e9").encode("latin-1")},
                )
            ).status_code,
        ]

    assert asyncio.run(_with_app(app, send)) == [401, 401, 200, 401]


def test_serve_cli_refuses_bad_options(tiny_run, tmp_path, capsys):
    cases = [
        (["serve", str(tmp_path)], "not a complete hydranet run"),
        # several workers: the first worker's load error, said once by the parent
        (["serve", str(tmp_path), "--workers", "2", "--port", "0"], "not a complete hydranet run"),
        (["serve", str(tiny_run), "--max-rows", "0"], "--max-rows"),
        (["serve", str(tiny_run), "--batch-wait-ms", "-1"], "--batch-wait-ms"),
        (["serve", str(tiny_run), "--workers", "0"], "--workers"),
        (["serve", str(tiny_run), "--api-key-file", str(tmp_path / "nokey")], "--api-key-file"),
        (
            [
                "serve",
                str(tiny_run),
                "--backend",
                "onnxruntime",
                "--onnx",
                str(tmp_path / "none.onnx"),
            ],
            "none.onnx",
        ),
        (["serve", str(tiny_run), "--host", "256.1.1.1", "--port", "0"], "256.1.1.1"),
    ]
    (tmp_path / "empty").write_text("\n")
    cases.append((["serve", str(tiny_run), "--api-key-file", str(tmp_path / "empty")], "empty"))
    for argv, culprit in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and culprit in err, (argv, err)


def _encoder_table(rng, n: int) -> pa.Table:
    def maybe(values, p=0.15):
        return [None if rng.random() < p else v for v in values]

    return pa.table({
        "x": pa.array(maybe((rng.lognormal(2, 2, n) * rng.choice([-1, 1], n)).tolist()), pa.float64()),
        "y": pa.array(maybe(rng.normal(5, 3, n).tolist()), pa.float64()),
        "z": pa.array(rng.integers(-1000, 10**6, n).tolist(), pa.int64()),
        "w": pa.array(maybe(rng.random(n) < 0.3), pa.bool_()),
        "c1": pa.array(maybe(rng.choice(["a", "b", "c", "d", "e", "rare"], n, p=[0.3, 0.3, 0.2, 0.1, 0.09, 0.01]).tolist())),
        "c2": pa.array(maybe(rng.integers(0, 30, n).tolist()), pa.int64()),
        "c3": pa.array(maybe(rng.choice([0.5, 1.0, 2.25, 1e16, 1.5e-7], n).tolist()), pa.float64()),
    })  # fmt: skip


def _shortcut_groups():
    from hydranet.data.preprocess import Preprocessor

    return Preprocessor.tabular(
        ["x", "y", "z", "w"], ["c1", "c2", "c3"], log1p=["x", "z"], min_count=3
    )


def _several_groups():
    """Two groups of each kind, interleaved, one numeric group with log1p and one without."""
    from hydranet.data.preprocess import Preprocessor
    from hydranet.features import CategoricalGroup, NumericGroup

    return Preprocessor([
        CategoricalGroup("letters", ["c1"], min_count=3),
        NumericGroup("wide", ["x", "z"], log1p=["x", "z"]),
        CategoricalGroup("codes", ["c3", "c2"], min_count=3),
        NumericGroup("plain", ["w", "y"]),
    ])  # fmt: skip


@pytest.mark.parametrize("make", [_shortcut_groups, _several_groups], ids=["shortcut", "groups"])
def test_encoder_matches_preprocessor_bit_for_bit(make):
    """The serving fast path (the groups' row encoders) against Preprocessor.transform: log1p,
    missing values, indicators, bool and int numerics, int and float categories, unseen
    categories; with the shortcut's two groups and with several groups of each kind."""
    import torch

    from hydranet.serve.validate import RequestSchema

    rng = np.random.default_rng(0)
    prep = make().fit(_encoder_table(rng, 2000))
    flags = [f for g in prep.of_kind("numeric") for f in g.missing_indicator_]
    assert sorted(flags) == [False, True, True, True]  # z never missing in training
    test = _encoder_table(rng, 500)  # other draws: unseen and rare categories, missing values
    z = test.column("z").to_pylist()
    z[::7] = [None] * len(z[::7])  # missing at serving time only: imputed, no indicator column
    test = test.set_column(test.column_names.index("z"), "z", pa.array(z, pa.int64()))
    rows = test.to_pylist()
    schema = RequestSchema(prep)
    encoded = schema.validate({"rows": rows}, 10_000)
    got = schema.encode_batch(encoded.parts)
    ref = prep.transform(test)
    assert list(got) == list(ref) == list(prep.groups)
    for name, x in ref.items():
        assert torch.equal(torch.from_numpy(got[name]), x), name


class Doubles(NumericGroup):
    """A feature kind with no JSON row encoder (a user's kind, by import path)."""

    kind = "test_serve_app:Doubles"
    default_encoder = "test_serve_app:AsIs"


class AsIs(Encoder):
    """The group's tensor as it is, for any kind."""

    def __init__(self, group, model_spec=None, state=None):
        super().__init__(group, model_spec, state)
        self.out_dim = int(group["width"])

    def forward(self, x):
        return x


def test_a_kind_without_a_row_encoder_is_refused_by_serve_not_by_predict(tmp_path, capsys):
    import pyarrow.parquet as pq

    import hydranet
    from conftest import make_table

    paths = {}
    for i, split in enumerate(["train", "test"]):
        paths[split] = str(tmp_path / f"{split}.parquet")
        pq.write_table(make_table(200, seed=i), paths[split])
    spec = hydranet.Spec.from_dict({
        "name": "doubles",
        "data": {**paths, "categorical": ["color"]},
        "features": [{"name": "measures", "kind": "test_serve_app:Doubles", "columns": ["a", "b"]}],
        "tasks": [{"name": "click", "kind": "binary"}],
        "model": {"architecture": "shared_bottom", "tower": [4]},
        "train": {"epochs": 1, "batch_size": 64},
    })  # fmt: skip
    run = hydranet.train(spec, tmp_path / "run", progress=False).path
    capsys.readouterr()  # the training's epoch line

    assert main(["serve", str(run), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'measures'" in err and "'test_serve_app:Doubles'" in err and "hydranet predict" in err

    out = tmp_path / "p.parquet"
    assert main(["predict", str(run), paths["test"], "--output", str(out)]) == 0
    assert pq.read_table(out).num_rows == 200


def test_api_key_sources(tmp_path):
    from hydranet.errors import UserError
    from hydranet.serve.server import api_key

    key_file = tmp_path / "key"
    key_file.write_text("  from-file\n")
    assert api_key(str(key_file), {"HYDRANET_API_KEY": "from-env"}) == "from-file"  # the file wins
    assert api_key(None, {"HYDRANET_API_KEY": " from-env "}) == "from-env"
    assert api_key(None, {}) is None
    with pytest.raises(UserError, match="nokey"):
        api_key(str(tmp_path / "nokey"), {})


def test_metrics_shared_by_workers_sum_their_slots(tmp_path):
    """Two workers' slots in one file: either worker renders the whole server's counts."""
    from hydranet.serve.metrics import create_shared

    path = tmp_path / "metrics"
    create_shared(path, 2)
    a, b = Metrics(path, 0), Metrics(path, 1)
    a.observe_request("/v1/predict", 200, 0.003)
    b.observe_request("/v1/predict", 200, 0.0004)
    b.observe_request("/v1/predict", 422, 0.001)
    b.observe_request("/nowhere", 404, 0.001)
    a.observe_batch(5, 2)
    b.observe_batch(1, 1)
    text = a.render()
    assert text == b.render()
    for line in (
        'hydranet_requests_total{endpoint="/v1/predict",code="200"} 2',
        'hydranet_request_errors_total{endpoint="/v1/predict",code="422"} 1',
        'hydranet_requests_total{endpoint="other",code="404"} 1',
        'hydranet_request_duration_seconds_bucket{endpoint="/v1/predict",le="0.0005"} 1',
        'hydranet_request_duration_seconds_bucket{endpoint="/v1/predict",le="0.005"} 3',
        'hydranet_request_duration_seconds_count{endpoint="/v1/predict"} 3',
        "hydranet_predicted_rows_total 6",
        'hydranet_batch_rows_bucket{le="4.0"} 1',
        'hydranet_batch_rows_bucket{le="8.0"} 2',
        "hydranet_batch_rows_count 2",
    ):
        assert line in text, line
    assert 'hydranet_request_errors_total{endpoint="/v1/predict",code="200"}' not in text
    # a private (single-process) Metrics sees only itself
    solo = Metrics()
    solo.observe_request("/healthz", 200, 0.001)
    assert 'hydranet_requests_total{endpoint="/healthz",code="200"} 1' in solo.render()
    assert "/v1/predict" not in solo.render()
