"""Run the HTTP API with uvicorn: bind, print one ready line, stop gracefully on SIGTERM.

The model is loaded before the socket is bound (a broken run fails with exit 2
and binds nothing); the socket is bound here rather than by uvicorn so that
``--port 0`` can report the port the system chose. The ready line is printed
once uvicorn accepts connections.

Shutdown: on SIGTERM (or Ctrl+C) uvicorn stops accepting connections, lets the
requests in flight finish (their micro-batches included: the batcher stops
only in the lifespan shutdown that follows), then returns. uvicorn re-raises
the signal it caught once it is done; a no-op SIGTERM handler installed here
receives it, so ``hydranet serve`` exits 0 after a SIGTERM instead of dying by
the signal.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from hydranet.errors import UserError
from hydranet.serve.app import Settings, create_app
from hydranet.serve.predictor import Predictor


def serve(
    predictor: Predictor,
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl+C; ``on_ready(url)`` runs once connections are accepted."""
    try:
        import uvicorn
    except ImportError:
        raise UserError(
            "hydranet serve needs FastAPI and uvicorn: pip install 'hydranet[serve]'"
        ) from None
    app = create_app(predictor, settings)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    config = uvicorn.Config(
        app, log_level="warning", access_log=access_log, lifespan="on", timeout_graceful_shutdown=30
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(url)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


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
