"""How the gateway connects to an engine's :class:`~aigc_gateway.runtime.base.Endpoint`.

Every part of the gateway that talks to an engine (the connection-level relay, the ASGI proxy and
its WebSockets, readiness checks, probes) goes through these, so none of them builds an address
itself and each works the same over a Unix socket (a sandboxed engine) as over TCP:

- :func:`open_stream` opens a raw connection for an :class:`asyncio.Protocol` (the relay's pool);
- :func:`httpx_transport` and :func:`base_url` give an httpx client for one endpoint (probes);
- :class:`EngineSessions` keeps the aiohttp sessions the ASGI proxy relays through: one pooled
  TCP session for every TCP endpoint, and one per Unix socket (aiohttp binds a Unix connector to
  one path), created on first use and closed with the whole.

The engine always sees plain HTTP with ``Host: localhost`` over a Unix socket.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import aiohttp
import httpx

from aigc_gateway.runtime.base import Endpoint

__all__ = ["UNIX_AUTHORITY", "EngineSessions", "base_url", "httpx_transport", "open_stream"]

UNIX_AUTHORITY = "localhost"
"""The host part of URLs (and the ``Host`` header) for an engine behind a Unix socket."""

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_stream(endpoint: Endpoint, factory: Callable[[], P], timeout_s: float) -> P:
    """A new connection to the engine driven by ``factory``'s protocol; ``OSError`` or
    ``TimeoutError`` when the engine cannot be reached."""
    loop = asyncio.get_running_loop()
    if endpoint.unix_path is not None:
        opening = loop.create_unix_connection(factory, endpoint.unix_path)
    else:
        assert endpoint.host is not None and endpoint.port is not None
        opening = loop.create_connection(factory, endpoint.host, endpoint.port)
    _, protocol = await asyncio.wait_for(opening, timeout_s)
    return protocol


def base_url(endpoint: Endpoint, scheme: str = "http") -> str:
    """``http://host:port`` (or ``ws://``), or ``http://localhost`` for a Unix socket, whose
    connection the transport or session makes."""
    if endpoint.unix_path is not None:
        return f"{scheme}://{UNIX_AUTHORITY}"
    return f"{scheme}://{endpoint.describe}"


def httpx_transport(endpoint: Endpoint, **options: object) -> httpx.AsyncHTTPTransport:
    """An httpx transport that reaches ``endpoint`` (``uds=`` for a Unix socket)."""
    if endpoint.unix_path is not None:
        return httpx.AsyncHTTPTransport(uds=endpoint.unix_path, **options)  # type: ignore[arg-type]
    return httpx.AsyncHTTPTransport(**options)  # type: ignore[arg-type]


class EngineSessions:
    """aiohttp sessions for the ASGI proxy: :meth:`session` gives the one to use for an endpoint
    with the base URL to send to. At most ``max_unix`` Unix sessions are kept open (the least
    recently used one is closed beyond that); ``close`` closes them all."""

    def __init__(self, *, max_unix: int = 512, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._max_unix = max_unix
        self._tcp: aiohttp.ClientSession | None = None
        self._unix: OrderedDict[str, aiohttp.ClientSession] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, endpoint: Endpoint) -> tuple[aiohttp.ClientSession, str]:
        """The session reaching ``endpoint`` and the base URL (no path) of its requests."""
        path = endpoint.unix_path
        if path is None:
            if self._tcp is None:
                self._tcp = self._new(
                    aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_s)
                )
            return self._tcp, base_url(endpoint)
        found = self._unix.get(path)
        if found is None or found.closed:
            found = self._new(
                aiohttp.UnixConnector(path=path, limit=0, keepalive_timeout=self._keepalive_s)
            )
            self._unix[path] = found
            while len(self._unix) > self._max_unix:
                _, old = self._unix.popitem(last=False)
                self._later_close(old)
        self._unix.move_to_end(path)
        return found, base_url(endpoint)

    def _new(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )

    def _later_close(self, session: aiohttp.ClientSession) -> None:
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        sessions = list(self._unix.values()) + ([self._tcp] if self._tcp else [])
        self._unix.clear()
        self._tcp = None
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
