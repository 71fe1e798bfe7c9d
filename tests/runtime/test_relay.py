"""The node relay itself (``runtime/relay.py``): its key file, the relay endpoint's text, bytes
relayed both ways with a half-close, and every connection without the credential refused before
anything reaches the engine (a real Unix-socket engine that counts the connections it gets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.runtime.relay import (
    RelayKey,
    RelayRefused,
    RelayServer,
    connect_relayed,
    hello_frame,
    serve_relay,
)

INSTANCE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder short enough for a Unix socket path under it."""
    folder = Path(tempfile.mkdtemp(prefix="aigc-relay-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class EchoEngine:
    """An engine on a Unix socket that echoes what it reads until the client's end, then
    closes; ``accepted`` counts the connections that reached it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self, path: Path) -> None:
        self.server = await asyncio.start_unix_server(self._echo, str(path))

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def engine(short_tmp: Path) -> AsyncIterator[tuple[EchoEngine, Path]]:
    path = short_tmp / "engine.sock"
    echo = EchoEngine()
    await echo.start(path)
    assert echo.server is not None
    try:
        yield echo, path
    finally:
        echo.server.close()
        await echo.server.wait_closed()


@pytest.fixture
def key() -> RelayKey:
    return RelayKey.generate()


@pytest.fixture
async def relay(engine: tuple[EchoEngine, Path], key: RelayKey) -> AsyncIterator[RelayServer]:
    hosted = {INSTANCE: str(engine[1])}
    async with await serve_relay(
        "127.0.0.1", 0, key, hosted.get, handshake_timeout_s=0.5
    ) as server:
        yield server


def endpoint_of(relay: RelayServer, instance_id: str = INSTANCE) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=relay.port, relay_for=instance_id)


async def refusal_of(relay: RelayServer, sent: bytes) -> bytes:
    """What the relay answers to ``sent`` on a raw connection, up to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def refused_with(answer: bytes, reason: str) -> bool:
    return answer[0] == 1 and answer[2 : 2 + answer[1]] == reason.encode()


# --- the key -------------------------------------------------------------------------------------


def test_the_key_file_is_created_private_and_read_back(short_tmp: Path) -> None:
    path = short_tmp / "run" / "relay.key"
    first = RelayKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RelayKey.load_or_create(path) == first == RelayKey.from_hex(path.read_text())
    assert list(path.parent.iterdir()) == [path]  # nothing left aside
    assert first.hex() not in repr(first) and first.fingerprint in repr(first)


def test_processes_creating_the_key_at_once_all_end_with_the_same(short_tmp: Path) -> None:
    path = short_tmp / "relay.key"
    start = threading.Barrier(8)

    def create() -> RelayKey:
        start.wait()
        return RelayKey.load_or_create(path)

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: create(), range(8)))
    assert len(set(keys)) == 1 and keys[0] == RelayKey.load(path)
    assert list(short_tmp.iterdir()) == [path]


def test_a_key_file_others_may_read_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "relay.key"
    RelayKey.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        RelayKey.load_or_create(path)


def test_a_file_that_is_not_a_key_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "relay.key"
    path.write_text("secret\n")
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        RelayKey.load(path)


# --- the endpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host"),
    [
        (f"relay:10.0.0.7:7070/{INSTANCE}", "10.0.0.7"),
        (f"relay:[fd00::7]:7070/{INSTANCE}", "fd00::7"),
        ("relay:node-3.cluster:7070/inst_1.a-b", "node-3.cluster"),
    ],
)
def test_a_relay_endpoint_round_trips_as_text(text: str, host: str) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint.host == host and endpoint.port == 7070 and endpoint.is_relay
    assert not endpoint.is_unix and not endpoint.is_direct_tcp
    assert endpoint.describe == text
    assert Endpoint.parse("10.0.0.7:7070").relay_for is None
    assert Endpoint.parse("relay:7070") == Endpoint(host="relay", port=7070)  # a host so named


@pytest.mark.parametrize(
    "text", ["relay:10.0.0.7:7070", "relay:10.0.0.7:7070/", "relay:h:1/a b", "relay:/x/y"]
)
def test_a_bad_relay_endpoint_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"endpoint|instance id"):
        Endpoint.parse(text)


# --- relaying ------------------------------------------------------------------------------------


async def test_bytes_are_relayed_both_ways_and_a_half_close_is_passed_on(
    relay: RelayServer, key: RelayKey, engine: tuple[EchoEngine, Path]
) -> None:
    sock = await connect_relayed(endpoint_of(relay), key, timeout_s=5)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        payload = os.urandom(3 * 1024 * 1024)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()  # the engine sees the end, echoes the rest, then closes
        assert await asyncio.wait_for(reader.read(), 10) == payload
    finally:
        writer.close()
        await writer.wait_closed()
    assert engine[0].accepted == 1


async def test_a_client_without_the_key_is_refused(
    relay: RelayServer,
    key: RelayKey,
    engine: tuple[EchoEngine, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = RelayKey.generate()
    with caplog.at_level(logging.WARNING, logger="aigc_gateway.runtime.relay"):
        with pytest.raises(RelayRefused):
            await connect_relayed(endpoint_of(relay), wrong, timeout_s=5)
        answer = await refusal_of(relay, hello_frame(wrong, INSTANCE))
    assert refused_with(answer, "bad credential")
    assert engine[0].accepted == 0
    assert caplog.text.count("refused") == 2 and "bad credential" in caplog.text
    assert key.hex() not in caplog.text and wrong.hex() not in caplog.text


async def test_bytes_that_are_no_handshake_are_refused(
    relay: RelayServer, engine: tuple[EchoEngine, Path]
) -> None:
    answer = await refusal_of(relay, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 100)
    assert refused_with(answer, "not a relay handshake")
    assert engine[0].accepted == 0


async def test_a_replayed_handshake_is_refused(
    relay: RelayServer, key: RelayKey, engine: tuple[EchoEngine, Path]
) -> None:
    hello = hello_frame(key, INSTANCE)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(hello)
    first = await reader.readexactly(2 + 32)
    assert first[0] == 0  # let through
    writer.close()
    await writer.wait_closed()
    assert refused_with(await refusal_of(relay, hello), "replayed handshake")
    assert engine[0].accepted == 1  # the first one only


async def test_a_stale_or_future_handshake_is_refused(
    relay: RelayServer, key: RelayKey, engine: tuple[EchoEngine, Path]
) -> None:
    for then in (time.time() - 3600, time.time() + 3600):
        answer = await refusal_of(relay, hello_frame(key, INSTANCE, now=then))
        assert refused_with(answer, "stale handshake")
    assert engine[0].accepted == 0


async def test_an_instance_the_relay_does_not_host_is_refused(
    relay: RelayServer, key: RelayKey, engine: tuple[EchoEngine, Path]
) -> None:
    with pytest.raises(RelayRefused, match="unknown instance"):
        await connect_relayed(endpoint_of(relay, "another"), key, timeout_s=5)
    assert engine[0].accepted == 0


async def test_an_instance_whose_socket_is_gone_is_refused(key: RelayKey, short_tmp: Path) -> None:
    hosted = {INSTANCE: str(short_tmp / "gone.sock")}
    async with await serve_relay("127.0.0.1", 0, key, hosted.get) as relay:
        with pytest.raises(RelayRefused, match="instance not reachable"):
            await connect_relayed(endpoint_of(relay), key, timeout_s=5)


async def test_silence_past_the_timeout_is_refused(
    relay: RelayServer, engine: tuple[EchoEngine, Path]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(hello_frame(RelayKey.generate(), INSTANCE)[:20])  # then nothing
        answer = await asyncio.wait_for(reader.read(), 5)  # the relay's 0.5 s, not ours
    finally:
        writer.close()
        await writer.wait_closed()
    assert refused_with(answer, "no handshake in time")
    assert engine[0].accepted == 0


async def test_a_relay_that_cannot_prove_the_key_is_not_trusted(key: RelayKey) -> None:
    """Something else on the relay's port that says "ok" is never sent a request."""

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(bytes(2 + 32))  # status ok, no reason, a MAC it cannot make
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        fake = Endpoint(host="127.0.0.1", port=port, relay_for=INSTANCE)
        with pytest.raises(RelayRefused, match="does not carry"):
            await connect_relayed(fake, key, timeout_s=5)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_relay_that_is_not_there_is_an_os_error(key: RelayKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ConnectionRefusedError) as refused:
            await connect_relayed(
                Endpoint(host="127.0.0.1", port=port, relay_for=INSTANCE), key, timeout_s=5
            )
        assert not isinstance(refused.value, RelayRefused)  # no relay there, nothing said
