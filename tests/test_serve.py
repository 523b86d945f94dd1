"""`hydranet serve` as a real server process: endpoints, parity with Run.predict, auth, SIGTERM.

Each test here starts ``python -m hydranet serve`` on 127.0.0.1 with ``--port 0``
(the ready line names the port). The bulk of the bad-input fuzzing runs in
process (tests/test_serve_app.py); a subset of it is replayed here against the
real server, over one keep-alive connection.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hydranet.run import Run  # noqa: E402
from test_serve_app import fuzz_cases, good_rows, train_tiny_run  # noqa: E402

pytestmark = pytest.mark.service
KEY = "s3cret-key-123"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.getbasetemp() / "serve-tiny")


class Server:
    def __init__(self, run: Path, tmp: Path, *args: str):
        self.log = tmp / "server.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hydranet", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log_file, text=True,
        )  # fmt: skip
        self.url = self._ready_line(timeout=300)

    def _ready_line(self, timeout: float) -> str:
        box: list[str] = []
        reader = threading.Thread(
            target=lambda: box.append(self.proc.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(timeout)
        if not box or "ready at" not in box[0]:
            self.proc.kill()
            raise AssertionError(f"no ready line; got {box}; log: {self.log.read_text()}")
        return re.search(r"http://[\d.]+:\d+", box[0]).group(0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=300)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log_file.close()


@pytest.fixture(scope="module")
def keyed_server(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    key_file = tmp / "key"
    key_file.write_text(KEY + "\n")
    server = Server(
        tiny_run,
        tmp,
        "--api-key-file",
        str(key_file),
        "--max-body-bytes",
        "65536",
        "--max-rows",
        "100",
    )
    yield server
    server.stop()


def _close(a, b, tol=1e-6) -> bool:
    # the server forwards on its own thread count and batch: equal to rounding, not bit for bit
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return math.isclose(a, b, abs_tol=tol)
    return a == b


def test_server_endpoints_parity_and_graceful_sigterm(tiny_run, tmp_path):
    # the in-flight request below waits for the shutdown with half its body sent: no body timeout
    server = Server(tiny_run, tmp_path, "--body-timeout-s", "3600")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}

        meta = client.get("/v1/metadata").json()
        assert [t["kind"] for t in meta["tasks"]] == ["binary", "regression", "multiclass"]
        assert meta["tasks"][2]["classes"] == ["x", "y", "z"]
        # in group order: the shortcut's groups are 'categorical' then 'numeric'
        assert [(f["name"], f["kind"], f["group"]) for f in meta["features"]] == [
            ("color", "categorical", "categorical"),
            ("size", "categorical", "categorical"),
            ("a", "numeric", "numeric"),
            ("b", "numeric", "numeric"),
            ("c", "numeric", "numeric"),
        ]
        assert meta["features"][0]["categories"] == 4 and "categories" not in meta["features"][2]
        assert (
            meta["model"]["architecture"] == "mmoe"
            and len(meta["model"]["version"]) == 64
            and len(meta["data"]["version"]) == 64
        )

        rows = (
            pq.read_table(Path(tiny_run).parent / "test.parquet")
            .select(["a", "b", "c", "color", "size"])
            .slice(0, 40)
            .to_pylist()
        )
        rows[0]["a"], rows[1]["color"], rows[2]["size"], rows[3]["color"] = (
            None,
            "purple",
            None,
            None,
        )  # missing, OOV
        r = client.post("/v1/predict", json={"rows": rows})
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == meta["model"]["version"]
        got = r.json()["predictions"]
        expected = Run.load(tiny_run).predict(pa.Table.from_pylist(rows)).to_pylist()
        assert len(got) == len(expected) == 40
        for g, e in zip(got, expected, strict=True):
            assert g.keys() == e.keys() and _close(g, e), (g, e)

        bad = client.post(
            "/v1/predict", json={"rows": [{"a": "x", "b": 1, "c": 1, "color": "red", "size": 1}]}
        )
        assert (
            bad.status_code == 422
            and bad.json()["error"]["field"] == "a"
            and bad.json()["error"]["row"] == 0
        )

        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'hydranet_requests_total{endpoint="/v1/predict",code="200"} 1' in metrics.text
        assert 'hydranet_request_errors_total{endpoint="/v1/predict",code="422"} 1' in metrics.text
        assert 'hydranet_request_duration_seconds_count{endpoint="/v1/predict"} 2' in metrics.text

    # a request in flight when SIGTERM arrives still gets its answer: headers and half the
    # body go first, the rest after the signal
    body = json.dumps({"rows": rows[:5]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:20]
        )
        # the signal goes once the server has read the headers (the request is in flight),
        # not after a fixed delay that a busy machine can outlast
        _wait_until(lambda: _read_by_peer(sock), "the server to read the request")
        server.proc.send_signal(signal.SIGTERM)
        _wait_until(lambda: _refuses_connections(server.url), "the server to stop listening")
        assert server.proc.poll() is None  # shutting down, but waiting for the request in flight
        sock.sendall(body[20:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"]) == 5
    assert server.stop() == 0
    assert "stopped" in server.log.read_text()
    assert "Traceback" not in server.log.read_text()


def test_api_key(keyed_server):
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        body = {"rows": good_rows(3, seed=1)}
        assert client.get("/healthz").status_code == 200  # probes need no key
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"x-api-key": KEY + "x"},
            {"authorization": KEY},
        ):
            r = client.post("/v1/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["field"] == "authorization", (
                headers,
                r.text,
            )
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert client.get("/v1/metadata", headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            r = client.post("/v1/predict", json=body, headers=headers)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 3
            assert client.get("/v1/metadata", headers=headers).json()["auth"] is True


def test_fuzz_subset_against_real_server(keyed_server):
    """Every third fuzz case (about 230 requests) over one keep-alive connection: no 5xx, named fields."""
    cases = fuzz_cases(seed=7, n=700, max_rows=100, max_body=65536)[::3]
    with httpx.Client(base_url=keyed_server.url, timeout=30, headers={"x-api-key": KEY}) as client:
        for case in cases:
            r = client.post("/v1/predict", content=case.content(), headers=case.headers)
            case.check(r.status_code, r.content)
        assert client.get("/healthz").status_code == 200
    text = keyed_server.log.read_text()
    assert "Traceback" not in text and "Exception" not in text, text[-2000:]


def test_workers_share_the_port_the_metrics_and_the_shutdown(tiny_run, tmp_path):
    """--workers 2: both answer on one port, /metrics counts for both, SIGTERM stops all;
    a worker that dies takes the server down with exit 1 and a line naming it."""
    server = Server(tiny_run, tmp_path, "--workers", "2")
    workers = _children(server.proc.pid)
    assert len(workers) >= 2, workers
    rows = good_rows(4, seed=3, mixed=False)
    expected = Run.load(tiny_run).predict(pa.Table.from_pylist(rows)).to_pylist()
    n = 40
    for _ in range(n):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/v1/predict", json={"rows": rows})
            assert r.status_code == 200 and all(
                _close(g, e) for g, e in zip(r.json()["predictions"], expected, strict=True)
            )
    for _ in range(5):  # whichever worker answers, it counts every worker's requests
        with httpx.Client(base_url=server.url, timeout=30) as client:
            text = client.get("/metrics").text
        assert f'hydranet_requests_total{{endpoint="/v1/predict",code="200"}} {n}' in text, text
        assert f"hydranet_predicted_rows_total {4 * n}" in text
    assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    log = server.log.read_text()
    assert "stopped" in log and "Traceback" not in log, log

    server = Server(tiny_run, tmp_path, "--workers", "2")
    victim = sorted(_children(server.proc.pid))[-1]
    import os

    os.kill(victim, signal.SIGKILL)
    assert server.proc.wait(timeout=300) == 1
    server.stop()
    log = server.log.read_text()
    assert "exited with code -9; stopping the server" in log and "Traceback" not in log, log


def _children(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing's resource tracker excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmd:
            found.append(int(entry.name))
    return found


def _wait_until(condition, what: str, timeout_s: float = 300) -> None:
    """Poll ``condition``; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def _tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) -> (send queue, receive queue) bytes of every IPv4 TCP socket
    on this machine, from /proc/net/tcp (the loopback connections the tests open)."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        tx, rx = (int(q, 16) for q in queues.split(":"))
        out[int(local.split(":")[1], 16), int(remote.split(":")[1], 16)] = (tx, rx)
    return out


def _read_by_peer(sock: socket.socket) -> bool:
    """True once the process at the other end has read every byte sent on ``sock``: the
    kernel there acknowledged them all (our send queue is empty) and its receive queue is
    empty. uvicorn parses what it reads at once, so the request then exists server-side."""
    mine, theirs = sock.getsockname()[1], sock.getpeername()[1]
    queues = _tcp_queues()
    return queues[mine, theirs][0] == 0 and queues[theirs, mine][1] == 0


def _refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=30).close()
    except ConnectionRefusedError:
        return True
    return False


# ------------------------------------------------------------------ SIGTERM under keep-alive load
class _Incomplete(Exception):
    pass


def _read_response(sock: socket.socket) -> tuple[int, bool, bytes]:
    """(status, whether the server says ``connection: close``, body) of one HTTP/1.1 response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Incomplete(data)
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Incomplete(data)
        body += chunk
    return int(lines[0].split()[1]), headers.get("connection") == "close", body


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_keep_alive_load_loses_no_request(tiny_run, tmp_path, workers):
    """Keep-alive clients send without pause; SIGTERM goes after a count of answers, not a delay.
    Every request written on an open connection gets a whole response (a client whose new
    connection is refused is not a lost request), and the server exits 0."""
    server = Server(tiny_run, tmp_path, "--workers", str(workers))
    host, port = server.url.removeprefix("http://").split(":")
    request = _post("/v1/predict", json.dumps({"rows": good_rows(2, seed=5)}).encode())
    clients, sigterm_after = 8, 300
    lock = threading.Lock()
    counts = {"ok": 0, "lost": 0, "refused": 0, "told_to_close": 0, "bad_status": 0}
    signalled = threading.Event()

    def add(what: str) -> None:
        with lock:
            counts[what] += 1
            # one SIGTERM, as a process manager sends it (a second one after the shutdown
            # is done would find the default handler back and kill the server)
            if counts["ok"] >= sigterm_after and not signalled.is_set():
                signalled.set()
                server.proc.send_signal(signal.SIGTERM)

    def client() -> None:
        sock = None
        while True:
            if sock is None:
                try:
                    sock = socket.create_connection((host, int(port)), timeout=120)
                except (ConnectionRefusedError, ConnectionResetError):
                    add("refused")  # the listening socket is closed: the server is gone
                    return
            try:
                sock.sendall(request)
                status, close, _ = _read_response(sock)
            except (OSError, _Incomplete):  # written on an open connection, no whole answer
                add("lost")
                sock.close()
                sock = None
                continue
            add("ok" if status == 200 else "bad_status")
            if close:
                add("told_to_close")
                sock.close()
                sock = None

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), counts
    code = server.proc.wait(timeout=300)
    server.stop()
    log = server.log.read_text()
    assert counts["lost"] == 0 and counts["bad_status"] == 0, (counts, log[-3000:])
    assert counts["ok"] >= sigterm_after and counts["refused"] == clients, counts
    assert code == 0 and "Traceback" not in log, log[-3000:]


# ------------------------------------------------------------------ ports, limits, aborts, HEAD
@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_port_out_of_range_is_a_one_line_error(tiny_run, port):
    # 99999 listened on 34463 (the port modulo 65536), 65536 on a random port, -1 a socket error
    proc = subprocess.run(
        [sys.executable, "-m", "hydranet", "serve", str(tiny_run), "--port", port],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"hydranet: error: --port must be between 0 and 65535 (0: any free port); got {port}"
    ], proc.stderr
    assert "ready" not in proc.stdout


def test_default_body_limit_fits_the_default_row_limit_of_census_rows():
    from hydranet.data.datasets import census
    from hydranet.serve.app import Settings, _limits_warning

    features = census.NUMERIC + census.CATEGORICAL
    assert len(features) == 38
    # 10,000 null rows of census's 38 features are 11.3 MB of JSON (real ones about 15 MB,
    # 1.5 KB a row): the old 1 MiB default could never take 10,000 of them
    assert _limits_warning(Settings(), features) is None
    old = _limits_warning(Settings(max_body_bytes=1 << 20), features)
    assert old.startswith("--max-rows 10,000 cannot be reached") and "1,048,576" in old, old


def test_aborted_and_slow_bodies_head_and_metadata(tiny_run, tmp_path):
    """A client gone mid-body: 499 in /metrics and one log line, no traceback; a body that
    stops coming: 408 after --body-timeout-s and the connection closed; HEAD on /healthz and
    /v1/metadata; the metadata names the run, not its path; limits that cannot both hold: a
    warning at start."""
    server = Server(
        tiny_run, tmp_path, "--body-timeout-s", "2", "--max-rows", "1000",
        "--max-body-bytes", "20000",
    )  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"rows": good_rows(3, seed=2)}).encode()
    aborts = 12
    for _ in range(aborts):
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(_post("/v1/predict", body)[: -len(body) // 2])
            _wait_until(lambda s=sock: _read_by_peer(s), "the server to read the headers")
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def counted() -> str:
            return client.get("/metrics").text

        line = f'hydranet_requests_total{{endpoint="/v1/predict",code="499"}} {aborts}'
        _wait_until(lambda: line in counted(), "the aborts to be counted")
        assert 'code="500"' not in counted()

        for path in ("/healthz", "/v1/metadata"):
            r = client.head(path)
            assert r.status_code == 200 and r.content == b"", (path, r.status_code)

        meta = client.get("/v1/metadata")
        assert meta.json()["run"] == {"name": "run", "version": meta.json()["model"]["version"]}
        assert str(Path(tiny_run).resolve().parent) not in meta.text
        assert meta.json()["limits"]["body_timeout_s"] == 2

    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(_post("/v1/predict", body)[:-5])
        status, close, answer = _read_response(sock)
        assert status == 408 and close, (status, answer)
        assert json.loads(answer)["error"]["field"] == "body"
        assert sock.recv(100) == b""  # closed: the rest of the body is not read as a request

    assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("the client closed the connection before sending the whole body") == aborts
    warning = [x for x in log.splitlines() if "warning" in x]
    assert len(warning) == 1 and "--max-rows 1,000 cannot be reached" in warning[0], log
