"""Prometheus metrics of the server, in the text exposition format (version 0.0.4).

Written here rather than with ``prometheus_client``: five series need about
sixty lines, and this keeps the ``serve`` extra small and the state per app
(``prometheus_client`` registers into a process-wide default registry, which
two apps in one process, as in the tests, would have to work around). Every
update happens on the event loop thread, so plain integers suffice.

Series: ``hydranet_requests_total{endpoint,code}``,
``hydranet_request_errors_total{endpoint,code}`` (4xx and 5xx),
``hydranet_request_duration_seconds{endpoint}`` (histogram),
``hydranet_predicted_rows_total`` and ``hydranet_batch_rows`` (histogram of the
rows per forward pass: how well micro-batching groups requests).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for bound, n in zip([*map(_num, self.buckets), "+Inf"], self.counts, strict=True):
            total += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}')
        brace = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{brace} {_num(self.sum)}", f"{name}_count{brace} {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.rows = 0
        self.batch_rows = _Histogram(BATCH_BUCKETS)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests[endpoint, code] += 1
        if endpoint not in self.latency:
            self.latency[endpoint] = _Histogram(LATENCY_BUCKETS)
        self.latency[endpoint].observe(seconds)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.rows += rows
        self.batch_rows.observe(rows)

    def render(self) -> str:
        lines = [
            "# HELP hydranet_requests_total HTTP requests by endpoint and status code.",
            "# TYPE hydranet_requests_total counter",
        ]
        for (ep, code), n in sorted(self.requests.items()):
            lines.append(f'hydranet_requests_total{{endpoint="{ep}",code="{code}"}} {n}')
        lines += [
            "# HELP hydranet_request_errors_total Requests answered with a 4xx or 5xx status, by code.",
            "# TYPE hydranet_request_errors_total counter",
        ]
        for (ep, code), n in sorted(self.requests.items()):
            if code >= 400:
                lines.append(f'hydranet_request_errors_total{{endpoint="{ep}",code="{code}"}} {n}')
        lines += [
            "# HELP hydranet_request_duration_seconds Time from request start to response end.",
            "# TYPE hydranet_request_duration_seconds histogram",
        ]
        for ep, hist in sorted(self.latency.items()):
            lines += hist.lines("hydranet_request_duration_seconds", f'endpoint="{ep}"')
        lines += [
            "# HELP hydranet_predicted_rows_total Rows predicted.",
            "# TYPE hydranet_predicted_rows_total counter",
            f"hydranet_predicted_rows_total {self.rows}",
            "# HELP hydranet_batch_rows Rows per forward pass (micro-batches of concurrent requests).",
            "# TYPE hydranet_batch_rows histogram",
            *self.batch_rows.lines("hydranet_batch_rows", ""),
        ]
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return repr(float(v))  # "0.0005", "1.0": the spelling prometheus_client uses too
