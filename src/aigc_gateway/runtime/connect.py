"""How the gateway connects to an engine's :class:`~aigc_gateway.runtime.base.Endpoint`.

Every part of the gateway that talks to an engine (the connection-level relay, the ASGI proxy and
its WebSockets, readiness checks, probes) goes through these, so none of them builds an address
itself and each works the same over a Unix socket (a sandboxed engine), over TCP, and over a node
relay (an engine on another node, ``runtime/relay.py``):

- :func:`open_stream` opens a raw connection for an :class:`asyncio.Protocol` (the relay's pool);
- :func:`httpx_transport` and :func:`base_url` give an httpx client for one endpoint (probes);
- :class:`EngineSessions` keeps the aiohttp sessions the ASGI proxy relays through: one pooled
  TCP session for every TCP endpoint, and one per Unix socket (aiohttp binds a Unix connector to
  one path) and per relay endpoint, created on first use and closed with the whole.

The engine always sees plain HTTP with ``Host: localhost`` over a Unix socket, its own or (behind
a relay) its node's.

Over a relay, every connector does the same: :func:`~aigc_gateway.runtime.relay.connect_relayed`
gives a connected socket past the handshake, and the library's own machinery runs on that socket
(``create_connection(sock=...)`` for asyncio and aiohttp; an httpcore network stream over it for
httpx). There is no local forwarder in between (a Unix socket per remote engine, relaying again):
that would copy every byte once more, and its listeners would need owning, cleaning and
protecting. The two library hooks used are the ones the libraries' own Unix-socket support is
built on: aiohttp's ``BaseConnector._create_connection`` (as ``UnixConnector`` overrides it) and
httpcore's network backend (httpx's transport takes none, so the pool it made is replaced by the
same pool with the relay's backend). The relay key is given by the composition root
(``gateway.py``) to each connector that may meet a relay endpoint (``relay_key=``); a relay
endpoint reached without one is an engine that cannot be reached (``ConnectionRefusedError``).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import httpcore
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace

from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.runtime.relay import RelayKey, connect_relayed

__all__ = ["UNIX_AUTHORITY", "EngineSessions", "base_url", "httpx_transport", "open_stream"]

UNIX_AUTHORITY = "localhost"
"""The host part of URLs (and the ``Host`` header) for an engine behind a Unix socket."""

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_stream(
    endpoint: Endpoint,
    factory: Callable[[], P],
    timeout_s: float,
    *,
    relay_key: RelayKey | None = None,
) -> P:
    """A new connection to the engine driven by ``factory``'s protocol; ``OSError`` or
    ``TimeoutError`` when the engine cannot be reached (a relay's refusal included)."""
    return await asyncio.wait_for(_open_stream(endpoint, factory, relay_key), timeout_s)


async def _open_stream(endpoint: Endpoint, factory: Callable[[], P], key: RelayKey | None) -> P:
    loop = asyncio.get_running_loop()
    if endpoint.unix_path is not None:
        _, protocol = await loop.create_unix_connection(factory, endpoint.unix_path)
        return protocol
    if endpoint.relay_for is not None:
        sock = await connect_relayed(endpoint, _key(endpoint, key), timeout_s=None)
        try:
            _, protocol = await loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        return protocol
    assert endpoint.host is not None and endpoint.port is not None
    _, protocol = await loop.create_connection(factory, endpoint.host, endpoint.port)
    return protocol


def _key(endpoint: Endpoint, key: RelayKey | None) -> RelayKey:
    if key is None:
        raise ConnectionRefusedError(f"{endpoint.describe}: a relay endpoint, but no relay key")
    return key


def base_url(endpoint: Endpoint, scheme: str = "http") -> str:
    """``http://host:port`` (or ``ws://``), or ``http://localhost`` for a Unix socket or a relay,
    whose connection the transport or session makes."""
    if not endpoint.is_direct_tcp:
        return f"{scheme}://{UNIX_AUTHORITY}"
    return f"{scheme}://{endpoint.describe}"


def httpx_transport(
    endpoint: Endpoint, *, relay_key: RelayKey | None = None, **options: Any
) -> httpx.AsyncHTTPTransport:
    """An httpx transport that reaches ``endpoint`` (``uds=`` for a Unix socket; a relay
    endpoint's takes ``limits`` and ``retries`` only)."""
    if endpoint.unix_path is not None:
        return httpx.AsyncHTTPTransport(uds=endpoint.unix_path, **options)
    if endpoint.relay_for is not None:
        return _RelayTransport(endpoint, relay_key, **options)
    return httpx.AsyncHTTPTransport(**options)


_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's own


class _RelayTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request mapping, its errors) over a pool whose every
    connection is a relayed one to one endpoint, whatever the URL's host."""

    def __init__(
        self,
        endpoint: Endpoint,
        key: RelayKey | None,
        *,
        limits: httpx.Limits = _LIMITS,
        retries: int = 0,
    ) -> None:
        # No TLS behind a relay: verify=False only spares loading the CA bundle for nothing.
        super().__init__(verify=False, limits=limits, retries=retries, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=_RelayBackend(endpoint, key),
        )


class _RelayBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, endpoint: Endpoint, key: RelayKey | None) -> None:
        self._endpoint, self._key = endpoint, key

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            key = _key(self._endpoint, self._key)
            sock = await connect_relayed(self._endpoint, key, timeout_s=timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or "relay handshake timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _SocketStream(sock)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a relay transport connects to its relay only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _SocketStream(httpcore.AsyncNetworkStream):
    """httpcore's stream over a connected non-blocking socket, read and written by the loop
    directly (nothing buffered beside the socket, so ``is_readable`` asks the socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self._sock, max_bytes), timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("read timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_sendall(self._sock, buffer), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("write timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("engines speak plain HTTP behind a relay")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore: an idle connection with something to read is dead
            if self._sock.fileno() < 0:
                return True
            poll = select.poll()
            poll.register(self._sock, select.POLLIN)
            return bool(poll.poll(0))
        if info == "socket":
            return self._sock
        return None


class _RelayConnector(aiohttp.BaseConnector):
    """aiohttp's connector for one relay endpoint: each new connection is a relayed socket,
    driven by aiohttp's own protocol (as its ``UnixConnector`` does for a socket path)."""

    def __init__(self, endpoint: Endpoint, key: RelayKey | None, *, keepalive_s: float) -> None:
        super().__init__(limit=0, keepalive_timeout=keepalive_s)
        self._endpoint, self._key = endpoint, key

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        try:
            key = _key(self._endpoint, self._key)
            sock = await connect_relayed(self._endpoint, key, timeout_s=timeout.sock_connect)
            try:
                _, proto = await self._loop.create_connection(self._factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        except TimeoutError:
            raise
        except OSError as exc:
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        return proto


class EngineSessions:
    """aiohttp sessions for the ASGI proxy: :meth:`session` gives the one to use for an endpoint
    with the base URL to send to. At most ``max_unix`` sessions of one endpoint each (Unix
    sockets, relays) are kept open (the least recently used one is closed beyond that); ``close``
    closes them all. ``relay_key`` is the cluster's relay key (relay endpoints need it)."""

    def __init__(
        self,
        *,
        relay_key: RelayKey | None = None,
        max_unix: int = 512,
        keepalive_s: float = 30.0,
    ) -> None:
        self._relay_key = relay_key
        self._keepalive_s = keepalive_s
        self._max_unix = max_unix
        self._tcp: aiohttp.ClientSession | None = None
        # Sessions bound to one endpoint each (a Unix socket, a relay), by the endpoint's text.
        self._bound: OrderedDict[str, aiohttp.ClientSession] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, endpoint: Endpoint) -> tuple[aiohttp.ClientSession, str]:
        """The session reaching ``endpoint`` and the base URL (no path) of its requests."""
        if endpoint.is_direct_tcp:
            if self._tcp is None:
                self._tcp = self._new(
                    aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_s)
                )
            return self._tcp, base_url(endpoint)
        address = endpoint.describe
        found = self._bound.get(address)
        if found is None or found.closed:
            found = self._new(self._connector(endpoint))
            self._bound[address] = found
            while len(self._bound) > self._max_unix:
                _, old = self._bound.popitem(last=False)
                self._later_close(old)
        self._bound.move_to_end(address)
        return found, base_url(endpoint)

    def _connector(self, endpoint: Endpoint) -> aiohttp.BaseConnector:
        if endpoint.unix_path is not None:
            return aiohttp.UnixConnector(
                path=endpoint.unix_path, limit=0, keepalive_timeout=self._keepalive_s
            )
        return _RelayConnector(endpoint, self._relay_key, keepalive_s=self._keepalive_s)

    def _new(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )

    def _later_close(self, session: aiohttp.ClientSession) -> None:
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        sessions = list(self._bound.values()) + ([self._tcp] if self._tcp else [])
        self._bound.clear()
        self._tcp = None
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
