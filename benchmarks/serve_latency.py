"""Serving latency: 32 concurrent clients sending single-row requests to `hydranet serve`.

    python benchmarks/serve_latency.py                    # census MMoE (1 epoch, trained once), writes RESULTS.md
    python benchmarks/serve_latency.py --run runs/census  # an existing run
    python benchmarks/serve_latency.py --smoke            # tiny run, a few hundred requests, prints only

The server is the real one (``python -m hydranet serve RUN --port 0``) in its own
process(es), with its defaults (one torch thread, no batch wait) unless flags say
otherwise, once per ``--workers`` count (default: 1 and 2 worker processes).
Each of the ``--clients`` clients holds one keep-alive connection and sends its
next request as soon as the previous answer is in (closed loop), one
census test row per request, for ``--requests`` requests in all after a warm-up.
Latency is client-side, request written to answer read. rows/s = rows answered /
wall time of the timed phase. The server's own ``/metrics`` give the mean rows
per forward pass (how well micro-batching groups the concurrent requests).

The load generator shares the machine with the server (2 cores on our CI box),
so its cost is taken from the server's. ``--client raw`` (default) is a
minimal asyncio HTTP/1.1 client (keep-alive, Content-Length), about 20 us of
CPU per request; ``--client httpx`` uses ``httpx.AsyncClient`` (several
hundred us per request), for comparison.

Targets (single-row requests, 32 clients, 2 CPU cores): p50 <= 5 ms, p99 <= 20 ms,
>= 2,000 rows/s.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import (
    CENSUS_EXAMPLE,
    base_parser,
    command_line,
    markdown_table,
    provenance,
    results_path,
    run_main,
    work_dir,
    write_section,
)

SECTION = "serve-latency"
TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0, "rows_per_s": 2000.0}
READING = (
    "How to read it: with 32 closed-loop clients the mean latency is 32 / throughput (Little's law), "
    "so a 5 ms p50 in closed loop would take about 6,400 requests/s; the latency targets are read at "
    "2,000 requests/s offered (open loop), the throughput target from the closed loop. An open loop "
    "offered more than the server can do queues without bound, and its latencies say only that. "
    "Wall-clock figures depend on how much of the two cores the benchmark got (the load average in "
    "'Machine'); CPU time per request depends on it much less."
)


# ------------------------------------------------------------------ the run
def census_run(work: Path, epochs: int) -> Path:
    """The census MMoE trained for ``epochs`` epochs, once (reused from ``work``)."""
    import hydranet
    from hydranet.cli import _load_spec

    out = work / f"census-{epochs}epoch"
    if not (out / "model.safetensors").exists():
        shutil.rmtree(out, ignore_errors=True)  # an interrupted earlier training
        spec = _load_spec(str(CENSUS_EXAMPLE), [f"train.epochs={epochs}"])
        hydranet.train(spec, out, progress=False)
    return out


def tiny_run(work: Path) -> Path:
    """A one-epoch run on 400 generated rows, for --smoke."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hydranet

    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 100)):
        a, b = rng.normal(size=(2, n))
        color = rng.choice(["red", "green", "blue"], size=n)
        y = (a + rng.normal(size=n) > 0).astype(np.int64)
        pq.write_table(
            pa.table({"a": a, "b": b, "color": color, "y": y, "v": 2 * a + b}),
            work / f"{split}.parquet",
        )
    spec = hydranet.Spec.from_dict(
        {
            "name": "serve_smoke",
            "data": {"train": str(work / "train.parquet"), "test": str(work / "test.parquet"), "numeric": ["a", "b"], "categorical": ["color"]},
            "tasks": [{"name": "y", "kind": "binary"}, {"name": "v", "kind": "regression"}],
            "model": {"architecture": "mmoe", "params": {"num_experts": 2, "expert_hidden": [8]}, "tower": [4]},
            "train": {"epochs": 1, "batch_size": 64},
        }
    )  # fmt: skip
    return Path(hydranet.train(spec, work / "run", progress=False).path)


def request_bodies(run: Path, rows_per_request: int, limit: int = 2000) -> list[bytes]:
    """JSON bodies of ``rows_per_request`` rows each, from the run's test split (NaN sent as null)."""
    from hydranet.serve.export import evaluation_table
    from hydranet.serve.predictor import load_meta

    spec, prep, _ = load_meta(run)
    _, table = evaluation_table(spec, prep)
    rows = table.slice(0, limit * rows_per_request).to_pylist()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and not math.isfinite(v):
                row[k] = None
    return [
        json.dumps({"rows": rows[i : i + rows_per_request]}).encode()
        for i in range(0, len(rows), rows_per_request)
    ]


# ------------------------------------------------------------------ the server
class Server:
    def __init__(self, run: Path, args: list[str], log: Path):
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hydranet", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(180)
        if not line or "ready at" not in line[0]:
            self.proc.kill()
            raise SystemExit(f"the server did not start; its log: {log.read_text()[-2000:]}")
        self.url = re.search(r"http://[\d.]+:\d+", line[0]).group(0)
        self.host, port = self.url.removeprefix("http://").split(":")
        self.port = int(port)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            return r.read().decode()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server and its worker processes have used so far."""
        import os

        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # a process that ended meanwhile
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        tree, ticks = {self.proc.pid}, 0
        for _ in range(3):  # the server, its workers, theirs
            tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        ticks = sum(stats[pid][1] for pid in tree if pid in stats)
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._log.close()


# ------------------------------------------------------------------ the clients
# A client sends its i-th request at ``due(i)``: now (closed loop: as soon as the
# previous answer is in) or on a fixed schedule (open loop). Latency counts from
# the due time, so a request delayed by a slow predecessor is charged the wait
# (no coordinated omission).
async def _wait(due: float | None) -> float:
    if due is None:
        return time.perf_counter()
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    return due


async def _raw_client(
    host: str, port: int, bodies: list[bytes], start: int, n: int, due, out: list[float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: "
    try:
        for i in range(n):
            body = bodies[(start + i) % len(bodies)]
            t0 = await _wait(due(i))
            writer.write(f"{head}{len(body)}\r\n\r\n".encode() + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            out.append(time.perf_counter() - t0)
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request failed: {status!r}")
    finally:
        writer.close()


async def _httpx_client(
    url: str, bodies: list[bytes], start: int, n: int, due, out: list[float]
) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(n):
            body = bodies[(start + i) % len(bodies)]
            t0 = await _wait(due(i))
            r = await client.post(
                "/v1/predict", content=body, headers={"content-type": "application/json"}
            )
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")


def load(
    server: Server,
    bodies: list[bytes],
    clients: int,
    requests: int,
    kind: str,
    rate: float | None = None,
) -> tuple[list[float], float]:
    """Latencies (s) of ``requests`` requests from ``clients`` clients, and the wall time.

    ``rate`` None: closed loop. Otherwise open loop: requests/s offered in all, each
    client on its own evenly spaced schedule, the clients' schedules interleaved.
    """
    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    lats: list[list[float]] = [[] for _ in range(clients)]

    async def main() -> float:
        t0 = time.perf_counter() + 0.05
        interval = clients / rate if rate else 0.0

        def due_for(k: int):
            return (lambda i: None) if not rate else (lambda i: t0 + (i + k / clients) * interval)

        if kind == "raw":
            jobs = [
                _raw_client(server.host, server.port, bodies, 997 * k, per[k], due_for(k), lats[k])
                for k in range(clients)
            ]
        else:
            jobs = [
                _httpx_client(server.url, bodies, 997 * k, per[k], due_for(k), lats[k])
                for k in range(clients)
            ]
        start = time.perf_counter()
        await asyncio.gather(*jobs)
        return time.perf_counter() - start

    cpu0 = time.process_time()
    wall = asyncio.run(main())
    load.client_cpu = time.process_time() - cpu0  # the load generator's own CPU time (this process)
    return [x for part in lats for x in part], wall


def measure(
    run: Path,
    bodies: list[bytes],
    rows_per_request: int,
    args,
    backend: str,
    workers: int,
    work: Path,
) -> list[dict]:
    """One server; a closed-loop measurement, then an open-loop one per ``--rates`` entry."""
    server_args = [
        "--threads",
        str(args.server_threads),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--workers",
        str(workers),
    ]
    if backend == "onnxruntime":
        onnx = work / "model.onnx"
        if not onnx.exists():
            from hydranet.serve.export import export_onnx

            export_onnx(run, onnx)
        server_args += ["--backend", "onnxruntime", "--onnx", str(onnx)]
    log = work / f"server-{backend}.log"
    server = Server(run, server_args, log)
    results = []
    # the load generator's own heap (torch, pyarrow, numpy: ~200,000 objects) out of the
    # collector's reach, as the server does with its own: a 100-200 ms full collection
    # here would be charged to the requests in flight
    gc.collect()
    gc.freeze()
    try:
        load(server, bodies, args.clients, args.warmup, args.client)
        for rate in [None, *args.rates]:
            before, cpu0 = server.metrics(), server.cpu_seconds()
            lats, wall = load(server, bodies, args.clients, args.requests, args.client, rate)
            cpu = server.cpu_seconds() - cpu0
            after = server.metrics()
            ms = np.array(lats) * 1e3
            batches = _counter(after, "hydranet_batch_rows_count") - _counter(
                before, "hydranet_batch_rows_count"
            )
            rows = _counter(after, "hydranet_predicted_rows_total") - _counter(
                before, "hydranet_predicted_rows_total"
            )
            results.append({
                "backend": backend,
                "workers": workers,
                "mode": "closed loop" if rate is None else f"open loop, {rate:,.0f} req/s offered",
                "rate": rate,
                "rows_per_request": rows_per_request,
                "requests": len(lats),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "rows_per_s": len(lats) * rows_per_request / wall,
                "mean_batch_rows": rows / batches if batches else float("nan"),
                "server_cpu_ms_per_request": cpu / len(lats) * 1e3,
                "client_cpu_ms_per_request": load.client_cpu / len(lats) * 1e3,
            })  # fmt: skip
            r = results[-1]
            print(
                f"{backend:<12} {workers} worker(s) {r['mode']:<32} {rows_per_request:>4} row(s)/request: p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, {r['rows_per_s']:,.0f} rows/s, {r['mean_batch_rows']:.1f} rows per "
                f"forward pass, CPU per request: server {r['server_cpu_ms_per_request']:.2f} ms, client "
                f"{r['client_cpu_ms_per_request']:.2f} ms",
                flush=True,
            )
    finally:
        code = server.stop()
    if code != 0:
        raise SystemExit(
            f"the server exited with {code} after SIGTERM; log: {log.read_text()[-2000:]}"
        )
    return results


def _counter(metrics: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))


def verdict(results: list[dict]) -> list[str]:
    """Throughput from the closed loop (its most), latency from the open loop at the target rate."""
    lines = []
    for backend, workers in dict.fromkeys((r["backend"], r["workers"]) for r in results):
        mine = [
            r
            for r in results
            if (r["backend"], r["workers"]) == (backend, workers) and r["rows_per_request"] == 1
        ]
        closed = [r for r in mine if r["rate"] is None]
        paced = [r for r in mine if r["rate"] == TARGETS["rows_per_s"]]
        if not closed or not paced:
            continue
        c, o = closed[0], paced[0]
        checks = [
            (
                f"{c['rows_per_s']:,.0f} rows/s at most (closed loop) >= 2,000",
                c["rows_per_s"] >= TARGETS["rows_per_s"],
            ),
            (
                f"p50 {o['p50_ms']:.2f} ms at 2,000 req/s offered <= 5 ms",
                o["p50_ms"] <= TARGETS["p50_ms"],
            ),
            (
                f"p99 {o['p99_ms']:.2f} ms at 2,000 req/s offered <= 20 ms",
                o["p99_ms"] <= TARGETS["p99_ms"],
            ),
        ]
        lines.append(
            f"- {backend}, {workers} worker(s): "
            + "; ".join(f"{text}: {'met' if ok else 'MISSED'}" for text, ok in checks)
        )
        # Not a measurement: what the closed loop's CPU time per request allows on two idle
        # cores, each worker's Python work being on one core (the GIL), the client's beside it.
        server, client = c["server_cpu_ms_per_request"], c["client_cpu_ms_per_request"]
        lines.append(
            f"  - CPU time per request (server {server:.2f} ms, client {client:.2f} ms) would allow about "
            f"{min(1000 * min(workers, 2) / server, 2000 / (server + client)):,.0f} rows/s on two idle cores "
            "(an estimate, not a measurement)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--run", type=Path, help="run directory to serve (default: train the census MMoE once)"
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="census training epochs when no --run (default 1)"
    )
    p.add_argument("--clients", type=int, default=32)
    p.add_argument(
        "--requests",
        type=int,
        default=20_000,
        help="timed requests per measurement (default 20,000)",
    )
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[500.0, 2000.0],
        help="open-loop offered rates in requests/s (default: 500 2000)",
    )
    p.add_argument(
        "--rows-per-request",
        type=int,
        nargs="+",
        default=[1],
        help="one measurement each (default: 1)",
    )
    p.add_argument(
        "--backends", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"]
    )
    p.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator (see the module docstring)",
    )
    p.add_argument(
        "--server-threads", type=int, default=1, help="the server's --threads (default 1)"
    )
    p.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="the server's --batch-wait-ms (default 0)"
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="the server's --workers, one server each (default: 1 2)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.warmup = (
            min(args.clients, 8),
            min(args.requests, 200),
            min(args.warmup, 40),
        )
        args.backends, args.rates = args.backends[:1], [min(r, 200.0) for r in args.rates[:1]]
        args.workers = args.workers[-1:]  # the multi-process server, the one with more parts
    work = work_dir(args, "serve_latency")
    run = args.run or (tiny_run(work) if args.smoke else census_run(work, args.epochs))
    results = []
    for rows_per_request in args.rows_per_request:
        bodies = request_bodies(run, rows_per_request)
        for backend in args.backends:
            for workers in args.workers:
                results += measure(run, bodies, rows_per_request, args, backend, workers, work)
    table = markdown_table(
        ["backend", "workers", "load", "rows/request", "requests", "p50 ms", "p99 ms", "mean ms", "rows/s", "rows per forward pass", "server CPU ms/request", "client CPU ms/request"],
        [[r["backend"], r["workers"], r["mode"], r["rows_per_request"], f"{r['requests']:,}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
          f"{r['mean_ms']:.2f}", f"{r['rows_per_s']:,.0f}", f"{r['mean_batch_rows']:.1f}",
          f"{r['server_cpu_ms_per_request']:.2f}", f"{r['client_cpu_ms_per_request']:.2f}"] for r in results],
    )  # fmt: skip
    body = (
        "## Serving latency\n\n"
        + provenance(command_line(argv), threads=args.server_threads, extra=("fastapi", "uvicorn", "uvloop", "httptools", "onnxruntime"))
        + f"- Setup: `hydranet serve` in its own processes (--threads {args.server_threads} per worker, --batch-wait-ms {args.batch_wait_ms}), "
        f"{args.clients} clients ({args.client} client, one keep-alive connection each) in the benchmark process on the same "
        f"machine, {args.requests:,} timed requests per line after {args.warmup:,} warm-up, run `{run}`. Closed loop: each "
        "client sends its next request when the answer to the previous one is in (the most the server does). Open loop: "
        "requests due on a fixed schedule, latency counted from the due time.\n\n"
        + table + "\n\n" + "\n".join(verdict(results)) + "\n\n" + READING + "\n"
    )  # fmt: skip
    section = write_section(results_path(args), SECTION, body)
    if results_path(args) is None:
        print(section)
    return 0


if __name__ == "__main__":
    run_main(main)
