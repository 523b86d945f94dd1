"""Prometheus metrics of the server, in the text exposition format (version 0.0.4).

Written here rather than with ``prometheus_client``: five series need about a
hundred lines, and this keeps the ``serve`` extra small and the state per app
(``prometheus_client`` registers into a process-wide default registry, which
two apps in one process, as in the tests, would have to work around; its
multi-process mode writes one file per process and metric and needs an
environment variable set before import).

Series: ``hydranet_requests_total{endpoint,code}``,
``hydranet_request_errors_total{endpoint,code}`` (4xx and 5xx),
``hydranet_request_duration_seconds{endpoint}`` (histogram),
``hydranet_predicted_rows_total`` and ``hydranet_batch_rows`` (histogram of the
rows per forward pass: how well micro-batching groups requests).

Storage: one float64 row per worker process (float64 counts are exact up to
2**53). With ``hydranet serve --workers N`` the rows are slots of one shared
memory-mapped file; every worker writes only its own slot and any worker
answers ``/metrics`` with the sum over all slots, so a scrape sees the whole
server whichever worker it reaches. Updates happen on a worker's event loop
thread only, so no locks are needed; a scrape may read another worker's slot
mid-update and be one request behind, as any scrape may be.
"""

from __future__ import annotations

import bisect
import mmap
from pathlib import Path

import numpy as np

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = ("/healthz", "/metrics", "/v1/metadata", "/v1/predict", "other")
_CODES = range(100, 600)  # an HTTP status outside it is counted as 599 (none is sent)

# one slot's layout: request counts [endpoint, code], then per endpoint a latency
# histogram (buckets, +Inf, sum, count), then the rows total and the batch histogram
_N_REQ = len(ENDPOINTS) * len(_CODES)
_LAT = len(LATENCY_BUCKETS) + 3
_BAT = len(BATCH_BUCKETS) + 3
SLOT_FLOATS = _N_REQ + len(ENDPOINTS) * _LAT + 1 + _BAT
SLOT_BYTES = SLOT_FLOATS * 8


def create_shared(path: Path, workers: int) -> None:
    """A zeroed metrics file with one slot per worker."""
    with open(path, "wb") as f:
        f.truncate(SLOT_BYTES * workers)


class Metrics:
    """This process's counters (slot ``slot`` of ``shared``, or private memory)."""

    def __init__(self, shared: Path | None = None, slot: int = 0):
        if shared is None:
            self._all = np.zeros((1, SLOT_FLOATS))
        else:
            with open(shared, "r+b") as f:
                self._mmap = mmap.mmap(f.fileno(), 0)
            self._all = np.frombuffer(self._mmap, dtype=np.float64).reshape(-1, SLOT_FLOATS)
        self._requests, self._latency, self._rows, self._batch = _views(self._all[slot])
        self._endpoint = {e: i for i, e in enumerate(ENDPOINTS)}

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        e = self._endpoint.get(endpoint, len(ENDPOINTS) - 1)
        self._requests[e, min(max(code, 100), 599) - 100] += 1
        _observe(self._latency[e], LATENCY_BUCKETS, seconds)

    def observe_batch(self, rows: int, requests: int) -> None:
        self._rows[0] += rows
        _observe(self._batch, BATCH_BUCKETS, rows)

    def render(self) -> str:
        """All workers' counters, summed."""
        requests, latency, rows, batch = _views(self._all.sum(axis=0))
        series = sorted(
            (ENDPOINTS[e], _CODES[c], int(requests[e, c])) for e, c in np.argwhere(requests > 0)
        )
        lines = [
            "# HELP hydranet_requests_total HTTP requests by endpoint and status code.",
            "# TYPE hydranet_requests_total counter",
            *(
                f'hydranet_requests_total{{endpoint="{ep}",code="{code}"}} {n}'
                for ep, code, n in series
            ),
            "# HELP hydranet_request_errors_total Requests answered with a 4xx or 5xx status, by code.",
            "# TYPE hydranet_request_errors_total counter",
            *(
                f'hydranet_request_errors_total{{endpoint="{ep}",code="{code}"}} {n}'
                for ep, code, n in series
                if code >= 400
            ),
            "# HELP hydranet_request_duration_seconds Time from request start to response end.",
            "# TYPE hydranet_request_duration_seconds histogram",
        ]
        for e in sorted(range(len(ENDPOINTS)), key=ENDPOINTS.__getitem__):
            if latency[e, -1] > 0:
                lines += _histogram_lines(
                    "hydranet_request_duration_seconds",
                    f'endpoint="{ENDPOINTS[e]}"',
                    LATENCY_BUCKETS,
                    latency[e],
                )
        lines += [
            "# HELP hydranet_predicted_rows_total Rows predicted.",
            "# TYPE hydranet_predicted_rows_total counter",
            f"hydranet_predicted_rows_total {int(rows[0])}",
            "# HELP hydranet_batch_rows Rows per forward pass (micro-batches of concurrent requests).",
            "# TYPE hydranet_batch_rows histogram",
            *_histogram_lines("hydranet_batch_rows", "", BATCH_BUCKETS, batch),
        ]
        return "\n".join(lines) + "\n"


def _views(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A slot's parts, as views: requests [endpoint, code], latency [endpoint, bins], rows [1], batch."""
    lat_end = _N_REQ + len(ENDPOINTS) * _LAT
    return (
        slot[:_N_REQ].reshape(len(ENDPOINTS), len(_CODES)),
        slot[_N_REQ:lat_end].reshape(len(ENDPOINTS), _LAT),
        slot[lat_end : lat_end + 1],
        slot[-_BAT:],
    )


def _observe(hist: np.ndarray, buckets: tuple[float, ...], value: float) -> None:
    # hist: per-bucket counts (the last one +Inf), then sum, then count
    hist[bisect.bisect_left(buckets, value)] += 1
    hist[-2] += value
    hist[-1] += 1


def _histogram_lines(
    name: str, labels: str, buckets: tuple[float, ...], hist: np.ndarray
) -> list[str]:
    sep = "," if labels else ""
    out, running = [], 0
    for bound, n in zip(
        [*map(_num, buckets), "+Inf"], hist[: len(buckets) + 1].tolist(), strict=True
    ):
        running += int(n)
        out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
    brace = f"{{{labels}}}" if labels else ""
    return out + [f"{name}_sum{brace} {_num(hist[-2])}", f"{name}_count{brace} {int(hist[-1])}"]


def _num(v: float) -> str:
    return repr(float(v))  # "0.0005", "1.0": the spelling prometheus_client uses too
