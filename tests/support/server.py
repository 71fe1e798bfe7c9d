"""Run the real gateway app on a real socket in a thread (uvicorn), for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from aigc_gateway.proxy.server import server_options
from tests.support.leaks import leak_report, leaked_tasks


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

        self.leaked = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._ready.set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets=sockets)
        # After the lifespan's shutdown: anything still pending was started and forgotten.
        if leaked := await leaked_tasks():
            self.leaked = leak_report("the served app", leaked)


def bound_socket() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1: its port is known before the server starts
    (e.g. to register the gateway's redirect URI at a sign-in provider)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_in_thread(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port, or ``sock``) until the block ends; yields the
    base URL."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    ready = threading.Event()
    config = uvicorn.Config(
        app,
        **server_options(app),  # as `aigc-gateway serve` runs it (trusted_proxies included)
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = _Server(config, ready)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="gateway-server", daemon=True)
    thread.start()
    if not ready.wait(60) or errors or not server.started:
        server.should_exit = True
        thread.join(10)
        sock.close()
        raise RuntimeError(f"gateway did not start: {errors}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    if server.leaked:
        raise AssertionError(server.leaked)
