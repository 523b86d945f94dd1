"""The HTTP API (FastAPI): predict, metadata, health and Prometheus metrics.

* ``POST /v1/predict``: ``{"rows": [{feature: value, ...}, ...]}`` →
  ``{"predictions": [{column: value, ...}, ...]}``, one object per row in
  request order, with the columns :meth:`hydranet.Run.predict` gives (binary:
  probability; multiclass: class and ``<task>_probs``; multilabel:
  probabilities; regression: value). A non-finite prediction is ``null``.
* ``GET /v1/metadata``: tasks and their outputs, features and their kinds,
  architecture, model and data versions (sha256 of the weights and of
  ``preprocessor.json``), limits.
* ``GET /healthz``: 200 while the model is running (no key needed, for probes).
* ``GET /metrics``: Prometheus text format (see :mod:`hydranet.serve.metrics`).

Every refusal is a JSON body ``{"error": {"status", "message", "field",
"row", "problems"}}`` with a 4xx status; the checks run cheapest first:
API key (401), content type (415), body size (413, counted while reading, so
a chunked body cannot get past it), JSON (400), rows and values (413 / 422).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import hydranet
from hydranet.serve.batcher import MicroBatcher
from hydranet.serve.metrics import CONTENT_TYPE, Metrics
from hydranet.serve.predictor import Predictor
from hydranet.serve.validate import RequestError, RequestSchema, Rows, parse_json

ENDPOINTS = ("GET /healthz", "GET /metrics", "GET /v1/metadata", "POST /v1/predict")
_PATHS = frozenset(e.split()[1] for e in ENDPOINTS)
# bodies larger than this are parsed and validated in a thread, so a 10,000-row
# request does not hold up the event loop (and the small requests behind it)
_OFFLOAD_BYTES = 64 * 1024
_DRAIN_FACTOR = 4  # see _read_body


@dataclass
class Settings:
    max_body_bytes: int = 1 << 20
    max_rows: int = 10_000
    batch_wait_ms: float = 2.0
    max_batch_rows: int = 8192
    api_key: str | None = None

    def check(self) -> Settings:
        from hydranet.errors import UserError

        for name in ("max_body_bytes", "max_rows", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}"
                )
        if not 0 <= self.batch_wait_ms <= 1000:
            raise UserError(f"--batch-wait-ms must be between 0 and 1000; got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise UserError("the API key is empty; put the key in the file or in HYDRANET_API_KEY")
        return self


def create_app(predictor: Predictor, settings: Settings | None = None) -> FastAPI:
    settings = (settings or Settings()).check()
    metrics = Metrics()
    batcher = MicroBatcher(
        predictor, settings.batch_wait_ms / 1000, settings.max_batch_rows, metrics.observe_batch
    )
    schema = RequestSchema(predictor.preprocessor.numeric, predictor.preprocessor.categorical)
    key = settings.api_key.encode() if settings.api_key else None
    version = predictor.model_version
    metadata = {
        "hydranet_version": hydranet.__version__,
        **predictor.metadata(),
        "limits": {"max_rows": settings.max_rows, "max_body_bytes": settings.max_body_bytes},
        "auth": key is not None,
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="hydranet",
        version=hydranet.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.batcher, app.state.metrics = batcher, metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    def authorize(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None:
            raise RequestError(
                401,
                "authorization: an API key is required; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                field="authorization",
            )
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key):
            raise RequestError(401, "authorization: wrong API key", field="authorization")

    def parse(body: bytes) -> Rows:
        return schema.validate(parse_json(body), settings.max_rows)

    @app.get("/healthz")
    async def healthz() -> Response:
        ok = batcher.running
        return JSONResponse(
            {"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/metadata")
    async def meta(request: Request) -> Response:
        authorize(request)
        return JSONResponse(metadata)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        authorize(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise RequestError(
                415,
                f"content-type: expected application/json; got {media or 'none'!r}",
                field="content-type",
            )
        body = await _read_body(request, settings.max_body_bytes)
        rows = await asyncio.to_thread(parse, body) if len(body) > _OFFLOAD_BYTES else parse(body)
        outputs = await batcher.predict(rows)
        return Response(
            _render(predictor, outputs),
            media_type="application/json",
            headers={"x-model-version": version},
        )

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> Response:
        headers = {"www-authenticate": 'Bearer realm="hydranet"'} if e.status == 401 else None
        return JSONResponse(e.to_dict(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        what = f"{request.method} {request.url.path[:200]}"
        message = (
            f"path: no endpoint {what}; endpoints: {', '.join(ENDPOINTS)}"
            if e.status_code in (404, 405)
            else str(e.detail)
        )
        return JSONResponse(
            RequestError(e.status_code, message, field="path").to_dict(), status_code=e.status_code
        )

    @app.exception_handler(Exception)
    async def internal(
        request: Request, e: Exception
    ) -> Response:  # a bug; uvicorn logs the traceback
        return JSONResponse(
            RequestError(500, "internal error; the server log has the traceback").to_dict(),
            status_code=500,
        )

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, counted while it arrives: a chunked body cannot get past the limit either.

    An oversized body is read on (and dropped) up to ``_DRAIN_FACTOR`` times the
    limit before the 413, so a client still uploading sees the answer rather
    than a reset connection; nothing past the limit is kept.
    """
    declared = request.headers.get("content-length", "")
    size = limit + 1 if declared.isdigit() and int(declared) > limit else 0
    chunks: list[bytes] = []
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit * _DRAIN_FACTOR:
                break
    except ClientDisconnect:
        raise RequestError(
            400, "body: the client went away before sending the whole body", field="body"
        ) from None
    if size > limit:
        raise RequestError(
            413,
            f"body: larger than the limit of {limit:,} bytes (--max-body-bytes); send fewer rows per request",
            field="body",
        )
    return b"".join(chunks)


def _render(predictor: Predictor, outputs: dict[str, np.ndarray]) -> bytes:
    finite = all(np.isfinite(a).all() for a in outputs.values())
    columns = {name: col.to_pylist() for name, col in predictor.to_arrow(outputs).items()}
    if not finite:
        columns = {name: [_finite_or_none(v) for v in vals] for name, vals in columns.items()}
    names = list(columns)
    rows = [dict(zip(names, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]
    return json.dumps({"predictions": rows}, allow_nan=False, separators=(",", ":")).encode()


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


class _MetricsMiddleware:
    """Counts every HTTP request by endpoint and status, and times it (pure ASGI: no body buffering)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            self.metrics.observe_request(
                path if path in _PATHS else "other", status, time.perf_counter() - start
            )
