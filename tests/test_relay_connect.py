"""Every connector of ``runtime/connect.py`` over a relay endpoint: a real engine (an aiohttp app
on a Unix socket) behind a real node relay on 127.0.0.1, reached through the connection-level
proxy's pool (``open_stream``), the ASGI proxy's sessions (``EngineSessions``: HTTP, a
server-sent event stream, a WebSocket, 64 MiB each way with checksums) and an httpx transport
(probes); and without the key, nothing reaches the engine on any of them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from aigc_gateway.proxy.pool import UpstreamConnection, UpstreamPool
from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.runtime.connect import EngineSessions, base_url, httpx_transport, open_stream
from aigc_gateway.runtime.relay import RelayKey, RelayRefused, serve_relay

INSTANCE = "fedcba9876543210fedcba9876543210"
BLOCK = random.Random(15).randbytes(1 << 20)
BIG = 64  # MiB, each way


def big_sha256() -> str:
    digest = hashlib.sha256()
    for _ in range(BIG):
        digest.update(BLOCK)
    return digest.hexdigest()


class Engine:
    """The engine's app; ``requests`` counts what reached it, ``go_on`` lets its event stream
    send its second event (so the test sees the first arrive alone)."""

    def __init__(self) -> None:
        self.requests = 0
        self.go_on = asyncio.Event()
        self.app = web.Application(middlewares=[self._count], client_max_size=2 * BIG << 20)
        self.app.add_routes(
            [
                web.get("/hello", self.hello),
                web.get("/events", self.events),
                web.get("/ws", self.ws),
                web.post("/upload", self.upload),
                web.get("/download", self.download),
            ]
        )

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests += 1
        return await handler(request)

    async def hello(self, request: web.Request) -> web.Response:
        return web.json_response({"host": request.host, "path": request.path_qs})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: progress\ndata: 1\n\n")
        await self.go_on.wait()
        await response.write(b"event: done\ndata: 2\n\n")
        await response.write_eof()
        return response

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def upload(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def download(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = BIG * len(BLOCK)
        await response.prepare(request)
        for _ in range(BIG):
            await response.write(BLOCK)
        await response.write_eof()
        return response


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="aigc-relay-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def engine(short_tmp: Path) -> AsyncIterator[tuple[Engine, Path]]:
    engine = Engine()
    runner = web.AppRunner(engine.app, shutdown_timeout=1)
    await runner.setup()
    path = short_tmp / "engine.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        yield engine, path
    finally:
        await runner.cleanup()


@pytest.fixture
def key() -> RelayKey:
    return RelayKey.generate()


@pytest.fixture
async def endpoint(engine: tuple[Engine, Path], key: RelayKey) -> AsyncIterator[Endpoint]:
    hosted = {INSTANCE: str(engine[1])}
    async with await serve_relay("127.0.0.1", 0, key, hosted.get) as relay:
        yield Endpoint(host="127.0.0.1", port=relay.port, relay_for=INSTANCE)


@pytest.fixture
async def sessions(key: RelayKey) -> AsyncIterator[EngineSessions]:
    sessions = EngineSessions(relay_key=key)
    yield sessions
    await sessions.close()


# --- the connection-level proxy's pool (open_stream) ---------------------------------------------


class Collect:
    """An owner of a pooled engine connection that keeps what the engine sends, to its close."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = asyncio.Event()

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        self.data += data

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        self.lost.set()

    def upstream_paused(self, paused: bool) -> None:
        pass


async def test_the_pool_reaches_an_engine_behind_a_relay(endpoint: Endpoint, key: RelayKey) -> None:
    pool = UpstreamPool(relay_key=key)
    conn = await pool.connect(endpoint, timeout_s=5)
    owner = Collect()
    conn.owner = owner
    conn.write(b"GET /hello?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await asyncio.wait_for(owner.lost.wait(), 10)
    head, _, body = bytes(owner.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"host": "localhost", "path": "/hello?x=1"}
    pool.close()


async def test_a_64_mib_download_through_open_stream(endpoint: Endpoint, key: RelayKey) -> None:
    reader = asyncio.StreamReader(limit=1 << 20)
    protocol = await open_stream(
        endpoint, lambda: asyncio.StreamReaderProtocol(reader), 5, relay_key=key
    )
    transport = protocol._transport  # type: ignore[attr-defined]
    writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
    writer.write(b"GET /download HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    digest, size = hashlib.sha256(), 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
        digest.update(chunk)
        size += len(chunk)
    writer.close()
    assert size == BIG * len(BLOCK) and digest.hexdigest() == big_sha256()


# --- the ASGI proxy's sessions (EngineSessions) --------------------------------------------------


async def test_http_events_and_a_websocket_through_the_sessions(
    endpoint: Endpoint, sessions: EngineSessions, engine: tuple[Engine, Path]
) -> None:
    session, base = sessions.session(endpoint)
    assert base == "http://localhost" == base_url(endpoint)
    assert sessions.session(endpoint)[0] is session  # one session per relay endpoint
    async with session.get(f"{base}/hello") as answer:
        assert answer.status == 200
        assert await answer.json() == {"host": "localhost", "path": "/hello"}
    # A streamed answer arrives as it is sent: the second event only after the first is seen.
    async with session.get(f"{base}/events") as stream:
        first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
        assert first == b"event: progress\ndata: 1\n\n"
        engine[0].go_on.set()
        assert await stream.content.read() == b"event: done\ndata: 2\n\n"
    async with session.ws_connect(f"{base_url(endpoint, 'ws')}/ws") as ws:
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=10) == "ping"
        await ws.send_bytes(bytes(range(256)))
        assert await ws.receive_bytes(timeout=10) == bytes(range(256))


async def test_64_mib_each_way_through_the_sessions(
    endpoint: Endpoint, sessions: EngineSessions
) -> None:
    session, base = sessions.session(endpoint)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(BIG):
            yield BLOCK

    async with session.post(f"{base}/upload", data=body()) as answer:
        assert await answer.json() == {"sha256": big_sha256(), "size": BIG * len(BLOCK)}
    digest, size = hashlib.sha256(), 0
    async with session.get(f"{base}/download") as answer:
        async for chunk in answer.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG * len(BLOCK) and digest.hexdigest() == big_sha256()


# --- probes (httpx) ------------------------------------------------------------------------------


async def test_an_httpx_client_over_the_relay(endpoint: Endpoint, key: RelayKey) -> None:
    transport = httpx_transport(endpoint, relay_key=key, retries=0)
    async with httpx.AsyncClient(
        transport=transport, base_url=base_url(endpoint), timeout=30
    ) as client:
        for n in range(3):  # kept alive between requests
            answer = await client.get(f"/hello?n={n}")
            assert answer.json() == {"host": "localhost", "path": f"/hello?n={n}"}
        async with client.stream("GET", "/download") as streamed:
            digest = hashlib.sha256()
            async for chunk in streamed.aiter_raw():
                digest.update(chunk)
        assert digest.hexdigest() == big_sha256()


# --- without the credential ----------------------------------------------------------------------


async def test_no_connector_reaches_the_engine_without_the_key(
    endpoint: Endpoint, engine: tuple[Engine, Path]
) -> None:
    wrong = RelayKey.generate()
    with pytest.raises(RelayRefused):
        await open_stream(endpoint, asyncio.Protocol, 5, relay_key=wrong)
    with pytest.raises(ConnectionRefusedError, match="no relay key"):
        await open_stream(endpoint, asyncio.Protocol, 5)
    for given in (wrong, None):
        sessions = EngineSessions(relay_key=given)
        try:
            session, base = sessions.session(endpoint)
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"{base}/hello")
        finally:
            await sessions.close()
        transport = httpx_transport(endpoint, relay_key=given)
        async with httpx.AsyncClient(transport=transport, base_url=base_url(endpoint)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/hello")
    assert engine[0].requests == 0
