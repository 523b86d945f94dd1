"""Run the HTTP API with uvicorn: bind, print one ready line, stop gracefully on SIGTERM.

With one worker the model is loaded before the socket is bound (a broken run
fails with exit 2 and binds nothing); the socket is bound here rather than by
uvicorn so that ``--port 0`` can report the port the system chose. The ready
line is printed once uvicorn accepts connections (in every worker).

Workers: one Python process answers HTTP on one core (the event loop and the
forward pass share its interpreter lock). ``--workers N`` starts N worker
processes (spawned, not forked: a forked PyTorch process can deadlock in its
thread pools) that each load the model once and accept connections from the
one listening socket, which the kernel shares out among them. The parent never
loads the model: a worker that cannot load it sends its error back, and the
parent stops the others and exits 2 with that one line. The workers count into
one shared metrics file (see :mod:`hydranet.serve.metrics`), so ``/metrics``
describes the whole server whichever worker answers. The parent only
supervises: on SIGTERM or Ctrl+C it passes SIGTERM on and waits for every
worker to finish its requests; if a worker dies, the others are stopped and
``hydranet serve`` exits 1 naming it (a process manager restarts the server).

Shutdown (SIGTERM or Ctrl+C) loses no request that reached the server:

1. No new connection completes: on Linux a socket filter that drops every
   packet is attached to the listening socket, so the kernel stops completing
   handshakes (a client's new connection waits, then is refused once the socket
   closes). Without it, connections the kernel completed but nobody accepted
   yet were reset when the socket closed: their clients had seen the
   connection open and had written a request.
2. The kernel's accept queue is emptied (the event loop accepts what is in it;
   the filter keeps it from refilling), then the listening socket is closed.
   With ``--workers N`` the workers share one socket; the parent closes its
   copy once they have started, so the last worker to stop closes it.
3. Every request already read is answered (micro-batches included: the
   batcher stops only in the lifespan shutdown that follows), with
   ``Connection: close``; so is every request that arrives on an open
   keep-alive connection during the drain. A connection idle at the signal (or
   accepted during the drain) is closed after ``_DRAIN_IDLE_S`` without a
   request: uvicorn closed idle connections at once, racing a request the
   client was writing at that moment. A half-sent body ends with a 408 after
   ``--body-timeout-s``.

uvicorn re-raises the signal it caught once it is done; a no-op SIGTERM handler
installed here receives it, so ``hydranet serve`` exits 0 after a SIGTERM
instead of dying by the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from hydranet.errors import UserError
from hydranet.serve.app import Settings, create_app
from hydranet.serve.metrics import Metrics, create_shared
from hydranet.serve.predictor import Predictor
from hydranet.serve.validate import check_servable

_STOP_TIMEOUT_S = 40  # uvicorn's graceful shutdown gets 30
# a connection idle when the drain starts gets this long to send a request (answered with
# Connection: close) before it is closed: a client that has just read its previous answer
# is usually writing the next request, which an immediate close would reset
_DRAIN_IDLE_S = 1.0
_ACCEPT_QUEUE_WAIT_S = 5.0  # the event loop empties the accept queue in microseconds; a bound
_SO_ATTACH_FILTER = 26  # Linux, <asm-generic/socket.h>; Python's socket module lacks the name


@dataclass(frozen=True)
class ModelSource:
    """How to load the model: given to each worker process, which loads its own copy."""

    run: str
    backend: str = "auto"
    onnx: str | None = None
    threads: int = 1

    def load(self) -> Predictor:
        import torch

        torch.set_num_threads(self.threads)
        predictor = Predictor.load(self.run, self.backend, self.onnx, threads=self.threads)
        # a feature kind with no JSON row encoder: refused here, before the socket is bound
        # (with several workers, the parent says the first worker's one line)
        check_servable(predictor.preprocessor)
        return predictor


def serve(
    source: ModelSource,
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 1,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM or Ctrl+C; ``on_ready(url)`` runs once connections are accepted.

    Returns the exit code: 0 after a signal, 1 if a worker died. A model that cannot be
    loaded raises UserError (with several workers, once the first worker reports it).
    """
    _check_uvicorn()
    # checked before the model loads; bind() would take a port modulo 65536, -1 fails in C
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (0: any free port); got {port}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1; got {workers}")
    # one worker loads here (a broken run fails before binding); with several, each worker
    # loads its own copy and a load error comes back to the parent as this one's would
    predictor = source.load() if workers == 1 else None
    sock = _bind(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    try:
        if predictor is not None:
            _run_uvicorn(predictor, settings, sock, Metrics(), access_log, on_ready, url)
            return 0
        return _supervise(source, settings, sock, workers, access_log, on_ready, url)
    finally:
        sock.close()


def _check_uvicorn() -> None:
    try:
        import fastapi  # noqa: F401
        import httptools  # noqa: F401 - the drain subclasses uvicorn's httptools protocol
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(
            "hydranet serve needs FastAPI and uvicorn: pip install 'hydranet[serve]'"
        ) from None


def _run_uvicorn(
    predictor: Predictor,
    settings: Settings,
    sock: socket.socket,
    metrics: Metrics,
    access_log: bool,
    on_ready: Callable[[str], None] | None,
    url: str,
    say_limits: bool = True,
) -> None:
    import uvicorn

    app = create_app(predictor, settings, metrics)
    if say_limits and app.limits_warning:
        print(f"hydranet serve: warning: {app.limits_warning}", file=sys.stderr, flush=True)
    protocol = _draining_protocol()
    config = uvicorn.Config(
        app,
        http=protocol,
        log_level="warning",
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=30,
        proxy_headers=False,  # bound to one address, client addresses unused: skip the middleware
        server_header=False,  # no "server: uvicorn" banner
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                freeze_startup_heap()
                if on_ready is not None:
                    on_ready(url)

        async def shutdown(self, sockets=None):
            protocol.draining = True
            if _refuse_handshakes(sock):
                await _empty_accept_queue(sock)
            await super().shutdown(sockets)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)


def _draining_protocol() -> type:
    """uvicorn's httptools protocol, changed for the drain (see the module docstring).

    uvicorn's own shutdown closes a connection that is between requests at once; here it
    gets ``_DRAIN_IDLE_S`` to send one more request, answered with ``Connection: close``.
    ``draining`` is set on the class (one per server) so that connections accepted from
    the queue during the drain get the same treatment.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DrainingProtocol(HttpToolsProtocol):
        draining = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if self.draining:
                self._close_if_idle_for(_DRAIN_IDLE_S)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self.draining and self.cycle is not None:  # None: an upgrade request
                self.cycle.keep_alive = False

        def shutdown(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._close_if_idle_for(_DRAIN_IDLE_S)
            else:
                self.cycle.keep_alive = False

        def _close_if_idle_for(self, seconds: float) -> None:
            # the keep-alive timer: a request arriving cancels it (data_received), and its
            # answer then closes the connection (keep_alive is off while draining)
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                min(seconds, self.timeout_keep_alive), self.timeout_keep_alive_handler
            )

    return DrainingProtocol


def _refuse_handshakes(sock: socket.socket) -> bool:
    """Stop the kernel completing new connections on ``sock``; False where that cannot be done.

    A classic BPF filter of one instruction, "return 0" (keep no byte of the packet), drops
    every SYN and handshake ACK to the listening socket (Linux applies a listener's filter
    before its TCP processing). Connections already in the accept queue, and accepted ones,
    are not affected. The filter belongs to the socket, so it holds for every worker.
    """
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog, native layout
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


async def _empty_accept_queue(sock: socket.socket) -> None:
    """Let the event loop accept every connection the kernel has completed on ``sock``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _ACCEPT_QUEUE_WAIT_S
    while _accept_queue_length(sock) and loop.time() < deadline:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # the protocols of the last accepted connections are made


def _accept_queue_length(sock: socket.socket) -> int:
    # Linux's tcp_info of a listening socket: tcpi_unacked (offset 24) is the accept queue
    # length, as `ss -l` shows it in Recv-Q
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return 0
    return struct.unpack_from("I", info, 24)[0]


def freeze_startup_heap() -> None:
    """Move every object alive after start-up out of the cyclic garbage collector's reach.

    Once torch, onnxruntime, FastAPI and the model are loaded the process holds
    about 230,000 tracked objects, nearly all alive until exit, and CPython's
    full (generation 2) collection walks every one: 120-240 ms per collection
    on the census model (2-core machine), with the event loop stopped, so
    every request in flight or arriving waits the whole pause (at 2,000
    requests/s that is 250-500 of them, past any p99). Full collections are
    rare under a steady load (none in 60 s at 2,000 requests/s; CPython runs
    one when the objects promoted since the last reach a quarter of the heap),
    but a long-running server meets them. ``gc.freeze()`` puts the start-up
    objects in the permanent generation: later collections walk only what was
    allocated since (measured: under 0.1 ms), and cyclic garbage made by
    requests is still collected.
    """
    gc.collect()
    gc.freeze()


# ------------------------------------------------------------------ workers
def _worker(
    source: ModelSource,
    settings: Settings,
    sock: socket.socket,
    metrics_file: str,
    slot: int,
    ready,
    access_log: bool,
) -> None:
    # Ctrl+C reaches the whole process group; the parent answers it with SIGTERM to each
    # worker, so the worker itself need not (and would otherwise die by KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        predictor = source.load()
    except UserError as e:  # the parent says it, once, as its own error
        ready.send(("error", slot, str(e)[:2000]))
        sys.exit(2)
    metrics = Metrics(Path(metrics_file), slot)
    _run_uvicorn(
        predictor,
        settings,
        sock,
        metrics,
        access_log,
        lambda url: ready.send(("ready", slot, "")),
        url="",
        say_limits=slot == 0,
    )


def _supervise(
    source: ModelSource,
    settings: Settings,
    sock: socket.socket,
    workers: int,
    access_log: bool,
    on_ready: Callable[[str], None] | None,
    url: str,
) -> int:
    ctx = multiprocessing.get_context("spawn")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, metrics_file = tempfile.mkstemp(prefix="hydranet-metrics-", dir=shm)
    os.close(fd)
    create_shared(Path(metrics_file), workers)
    # each worker sends ("ready", slot, "") once it accepts, or ("error", slot, message); one
    # small message is one write, under PIPE_BUF, so the workers' messages never interleave
    ready, ready_in = ctx.Pipe(duplex=False)
    stopping: list[int] = []

    def on_signal(signum, frame):
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs = []
    try:
        for slot in range(workers):
            p = ctx.Process(
                target=_worker,
                args=(source, settings, sock, metrics_file, slot, ready_in, access_log),
                name=f"hydranet-serve-worker-{slot}",
            )
            p.start()
            procs.append(p)
        # the workers hold the listening socket now; without the parent's copy it closes
        # when the last worker stops, so no connection waits in it for nobody
        sock.close()
        waiting = set(range(workers))
        while not stopping:
            ended = wait([*(p.sentinel for p in procs), ready], timeout=0.5)
            # messages first: a worker that failed to load sends its error, then exits
            while ready.poll():
                what, slot, message = ready.recv()
                if what == "error":
                    raise UserError(message)
                waiting.discard(slot)
                if not waiting and on_ready is not None:
                    on_ready(url)
            dead = [p for p in procs if p.sentinel in ended and p.exitcode is not None]
            if dead:
                p = dead[0]
                print(
                    f"hydranet serve: {p.name} exited with code {p.exitcode}; stopping the server",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return 0
    finally:
        for p in procs:
            if p.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(_STOP_TIMEOUT_S)
            if p.exitcode is None:
                p.kill()
                p.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(OSError):
            os.unlink(metrics_file)


def _bind(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP, as getaddrinfo gives it: asyncio sets TCP_NODELAY only on
    # such sockets, and without it every response waits ~40 ms for a delayed ACK (Nagle)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as e:
        raise UserError(
            f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def api_key(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The key from ``--api-key-file`` (its contents, stripped), else ``HYDRANET_API_KEY``, else None."""
    if path:
        try:
            return Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--api-key-file {path}: {getattr(e, 'strerror', None) or e}") from None
    key = environ.get("HYDRANET_API_KEY")
    return None if key is None else key.strip()


def print_ready(url: str) -> None:
    print(f"hydranet serve: ready at {url} (POST {url}/v1/predict)", flush=True)
    sys.stdout.flush()
