"""The HTTP API: predict, metadata, health and Prometheus metrics.

* ``POST /v1/predict``: ``{"rows": [{feature: value, ...}, ...]}`` →
  ``{"predictions": [{column: value, ...}, ...]}``, one object per row in
  request order, with the columns :meth:`hydranet.Run.predict` gives (binary:
  probability; multiclass: class and ``<task>_probs``; multilabel:
  probabilities; regression: value). A non-finite prediction is ``null``.
* ``GET /v1/metadata``: tasks and their outputs, features with their groups and kinds,
  architecture, model and data versions (sha256 of the weights and of
  ``preprocessor.json``), limits.
* ``GET /healthz``: 200 while the model is running (no key needed, for probes).
  ``HEAD`` works on it and on ``/v1/metadata`` (the status and headers, no body).
* ``GET /metrics``: Prometheus text format (see :mod:`hydranet.serve.metrics`).

Every refusal is a JSON body ``{"error": {"status", "message", "field",
"row", "problems"}}`` with a 4xx status; the checks run cheapest first:
API key (401), content type (415), body size (413, counted while reading, so
a chunked body cannot get past it), JSON (400), rows and values (413 / 422).
A body not received within ``body_timeout_s`` gets 408 and the connection is
closed; a client that goes away before its whole body arrived is counted as 499
(nginx's "client closed request") and logged in one line.

Limits: ``max_body_bytes`` (32 MiB) is sized for ``max_rows`` (10,000) rows of a
census-like model: a Census-Income row of the census example's 38 features is
about 1,500 bytes of JSON (1,131 with every value null), so 10,000 rows are
about 15 MB. A server whose ``max_rows`` rows cannot fit in ``max_body_bytes``
even with every value null says so in a warning when it starts (the smaller
limit wins; both still work, so it is not refused).

The metadata, health and metrics endpoints (and the JSON 404/405 answers) are a
FastAPI app. ``POST /v1/predict`` is answered by :class:`HydranetApp` itself, a
plain ASGI handler in front of it: measured in process with 32 concurrent
single-row requests on the census model (shared 2-core machine), FastAPI's per-request machinery
(middleware stack, routing, dependency solving, telemetry hooks) cost about
340 us of CPU per request, more than the prediction itself (about 240 us
including validation, the forward pass share and the JSON answer), and the
prediction endpoint needs none of it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import hydranet
from hydranet.serve.batcher import MicroBatcher
from hydranet.serve.metrics import CONTENT_TYPE, Metrics
from hydranet.serve.predictor import Predictor
from hydranet.serve.validate import RequestError, RequestSchema, Rows, parse_json
from hydranet.tasks import Task

ENDPOINTS = ("GET /healthz", "GET /metrics", "GET /v1/metadata", "POST /v1/predict")
PREDICT = "/v1/predict"
_PATHS = frozenset(e.split()[1] for e in ENDPOINTS)
# bodies larger than this are parsed and validated in a thread, so a 10,000-row
# request does not hold up the event loop (and the small requests behind it)
_OFFLOAD_BYTES = 64 * 1024
_DRAIN_FACTOR = 4  # see _read_body
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
log = logging.getLogger("hydranet.serve")


@dataclass
class Settings:
    max_body_bytes: int = 32 << 20  # 10,000 census-like rows (about 15 MB) fit: see above
    max_rows: int = 10_000
    batch_wait_ms: float = 0.0
    max_batch_rows: int = 8192
    api_key: str | None = None
    body_timeout_s: float = 10.0

    def check(self) -> Settings:
        from hydranet.errors import UserError

        for name in ("max_body_bytes", "max_rows", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}"
                )
        if not 0 <= self.batch_wait_ms <= 1000:
            raise UserError(f"--batch-wait-ms must be between 0 and 1000; got {self.batch_wait_ms}")
        if not 0 < self.body_timeout_s <= 3600:
            raise UserError(
                f"--body-timeout-s must be above 0 and at most 3600; got {self.body_timeout_s}"
            )
        if self.api_key is not None and not self.api_key:
            raise UserError("the API key is empty; put the key in the file or in HYDRANET_API_KEY")
        return self


class HydranetApp:
    """The ASGI app: ``POST /v1/predict`` here, everything else (lifespan included) in FastAPI."""

    def __init__(
        self, predictor: Predictor, settings: Settings | None = None, metrics: Metrics | None = None
    ):
        self.predictor, self.settings = predictor, (settings or Settings()).check()
        self.metrics = metrics or Metrics()
        self.schema = RequestSchema(predictor.preprocessor)
        self.batcher = MicroBatcher(
            predictor,
            self.settings.batch_wait_ms / 1000,
            self.settings.max_batch_rows,
            self.metrics.observe_batch,
            schema=self.schema,
        )
        self._key = self.settings.api_key.encode() if self.settings.api_key else None
        self._version = predictor.model_version.encode()
        self.fastapi = self._build_fastapi()
        self.limits_warning = _limits_warning(self.settings, self._feature_names)

    @asynccontextmanager
    async def lifespan(self, app: Any = None):
        """Starts the batcher (the model's worker thread) and stops it after the last request."""
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.fastapi(scope, receive, send)  # lifespan
        start, status = time.perf_counter(), 500
        path = scope["path"]

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if path == PREDICT and scope["method"] == "POST":
                await self._predict(scope, receive, send_and_note)
            else:
                await self.fastapi(scope, receive, send_and_note)
        except _ClientGone:
            status = 499  # nginx's "client closed request": nobody to answer
            log.warning(
                "%s %s: the client closed the connection before sending the whole body",
                scope["method"],
                path[:200],
            )
        finally:
            self.metrics.observe_request(
                path if path in _PATHS else "other", status, time.perf_counter() - start
            )

    # ------------------------------------------------------------ POST /v1/predict
    async def _predict(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        extra: list[tuple[bytes, bytes]] = []
        try:
            self.authorize(headers.get)
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise RequestError(
                    415,
                    f"content-type: expected application/json; got {media or 'none'!r}",
                    field="content-type",
                )
            try:
                async with asyncio.timeout(self.settings.body_timeout_s):
                    body = await _read_body(
                        receive, headers.get("content-length", ""), self.settings.max_body_bytes
                    )
            except TimeoutError:
                # the rest of the body may still come: close rather than read it as a request
                extra.append(_CLOSE)
                raise RequestError(
                    408,
                    f"body: not received within {self.settings.body_timeout_s:g} s (--body-timeout-s)",
                    field="body",
                ) from None
            rows = (
                await asyncio.to_thread(self._parse, body)
                if len(body) > _OFFLOAD_BYTES
                else self._parse(body)
            )
            outputs = await self.batcher.predict(rows)
            status, payload = 200, _render(self.predictor, outputs)
            extra.append((b"x-model-version", self._version))
        except RequestError as e:
            status, payload = e.status, json.dumps(e.to_dict()).encode()
            if e.status == 401:
                extra.append((b"www-authenticate", b'Bearer realm="hydranet"'))
        except _ClientGone:  # not a bug: counted as 499 by the caller, no answer to send
            raise
        except Exception:  # a bug: answer 500 (never a validation problem), keep the traceback
            log.exception("POST /v1/predict failed")
            status, payload = (
                500,
                json.dumps(
                    RequestError(500, "internal error; the server log has the traceback").to_dict()
                ).encode(),
            )
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *extra],
        }
        await send(start)
        await send({"type": "http.response.body", "body": payload})

    def _parse(self, body: bytes) -> Rows:
        return self.schema.validate(parse_json(body), self.settings.max_rows)

    def authorize(self, header) -> None:
        """401 unless the API key (if one is set) comes as ``X-API-Key`` or ``Authorization: Bearer``."""
        if self._key is None:
            return
        given = header("x-api-key")
        if given is None:
            scheme, _, token = (header("authorization") or "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None:
            raise RequestError(
                401,
                "authorization: an API key is required; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                field="authorization",
            )
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._key):
            raise RequestError(401, "authorization: wrong API key", field="authorization")

    # ------------------------------------------------------------ everything else
    def _build_fastapi(self) -> FastAPI:
        batcher, metrics = self.batcher, self.metrics
        described = self.predictor.metadata()
        self._feature_names = [f["name"] for f in described["features"]]
        metadata = {
            "hydranet_version": hydranet.__version__,
            **described,
            "limits": {
                "max_rows": self.settings.max_rows,
                "max_body_bytes": self.settings.max_body_bytes,
                "body_timeout_s": self.settings.body_timeout_s,
            },
            "auth": self._key is not None,
        }
        app = FastAPI(
            title="hydranet",
            version=hydranet.__version__,
            lifespan=self.lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )

        # HEAD as well as GET, for probes and load balancers that check with HEAD
        # (FastAPI, unlike Starlette, does not add it to a GET route)
        @app.api_route("/healthz", methods=["GET", "HEAD"])
        async def healthz() -> Response:
            ok = batcher.running
            return JSONResponse(
                {"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
            )

        @app.get("/metrics")
        async def prometheus(request: Request) -> Response:
            self.authorize(request.headers.get)
            return Response(metrics.render(), media_type=CONTENT_TYPE)

        @app.api_route("/v1/metadata", methods=["GET", "HEAD"])
        async def meta(request: Request) -> Response:
            self.authorize(request.headers.get)
            return JSONResponse(metadata)

        @app.exception_handler(RequestError)
        async def refused(request: Request, e: RequestError) -> Response:
            headers = {"www-authenticate": 'Bearer realm="hydranet"'} if e.status == 401 else None
            return JSONResponse(e.to_dict(), status_code=e.status, headers=headers)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, e: StarletteHTTPException) -> Response:
            what = f"{request.method} {request.url.path[:200]}"
            known = e.status_code in (404, 405) or request.url.path == PREDICT
            message = (
                f"path: no endpoint {what}; endpoints: {', '.join(ENDPOINTS)}"
                if known
                else str(e.detail)
            )
            status = 405 if request.url.path == PREDICT else e.status_code
            return JSONResponse(
                RequestError(status, message, field="path").to_dict(), status_code=status
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


def create_app(
    predictor: Predictor, settings: Settings | None = None, metrics: Metrics | None = None
) -> HydranetApp:
    return HydranetApp(predictor, settings, metrics)


class _ClientGone(Exception):
    pass


def _limits_warning(settings: Settings, features: list[str]) -> str | None:
    """Why ``max_rows`` can never be reached under ``max_body_bytes``, or None.

    The smallest body of ``max_rows`` rows has every value null and no spaces.
    """
    row = 2 + sum(len(json.dumps(f)) + 5 for f in features) + max(len(features) - 1, 0)
    smallest = len('{"rows":[]}') + settings.max_rows * (row + 1) - 1
    if smallest <= settings.max_body_bytes:
        return None
    return (
        f"--max-rows {settings.max_rows:,} cannot be reached: {settings.max_rows:,} rows of this "
        f"model's {len(features)} features take at least {smallest:,} bytes of JSON (every "
        f"value null), over --max-body-bytes {settings.max_body_bytes:,}; raise --max-body-bytes "
        f"or lower --max-rows"
    )


async def _read_body(receive, declared: str, limit: int) -> bytes:
    """The body, counted while it arrives: a chunked body cannot get past the limit either.

    An oversized body is read on (and dropped) up to ``_DRAIN_FACTOR`` times the
    limit before the 413, so a client still uploading sees the answer rather
    than a reset connection; nothing past the limit is kept.
    """
    size = limit + 1 if declared.isdigit() and int(declared) > limit else 0
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit * _DRAIN_FACTOR:
            break
    if size > limit:
        raise RequestError(
            413,
            f"body: larger than the limit of {limit:,} bytes (--max-body-bytes); send fewer rows per request",
            field="body",
        )
    return b"".join(chunks)


def _render(predictor: Predictor, outputs: dict[str, np.ndarray]) -> bytes:
    finite = all(np.isfinite(a).all() for a in outputs.values())
    columns: dict[str, list] = {}
    for t in predictor.tasks:
        if type(t).to_arrow is Task.to_arrow:  # the base column, float64 values: skip Arrow
            columns[t.name] = outputs[t.name].astype(np.float64).tolist()
        else:
            columns.update(
                (name, col.to_pylist()) for name, col in t.to_arrow(outputs[t.name]).items()
            )
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
