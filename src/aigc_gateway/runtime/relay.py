"""The node relay: how the gateway reaches an engine on another node without opening it to the
network.

An engine listens on a Unix socket on its own node only. Each node runs one relay
(:func:`serve_relay`, one TCP port per node) that accepts only the gateway, authenticated per
connection, and then copies bytes between that connection and the engine's socket. The gateway
names such an engine by a relay endpoint (``Endpoint(host, port, relay_for=instance_id)``, text
``relay:host:port/<instance id>``) and connects to it with :func:`connect_relayed`
(``runtime/connect.py`` builds every connector of the gateway on it).

The handshake, bound to one instance id. The client sends one frame first::

    magic "AIGCRLY" | version 1 | timestamp (u64, ms since the epoch) | nonce (16 random bytes)
    | id length (u8) | instance id (ASCII) | HMAC-SHA256(key, "aigc-relay hello" | all before)

The relay reads it within ``handshake_timeout_s``, checks the MAC (constant time), then the
timestamp (within ``window_s`` of its own clock either way: nodes' clocks differ a little) and
that the nonce was not seen within the window (a replayed frame), then that it hosts the
instance (``resolve(instance_id)`` gives its socket path, or None), and connects to that socket.
It answers one frame::

    status (u8: 0 ok, 1 refused) | reason length (u8) | reason (ASCII)
    | HMAC-SHA256(key, "aigc-relay reply" | the client's nonce | status | length | reason)

and, when ok, copies bytes both ways until both sides have closed (a half-close is passed on;
each direction waits for the other side to drain, so neither buffers without bound). The client
checks the reply's MAC too: only a relay holding the key can say ok, so a process that took the
relay's port (after a crash of the relay) is never sent a user's request.

Refused (the reply says why in a few words, then the connection is closed, and the relay logs it
with the peer's address, never the key): bytes that are not a handshake, a wrong key (a bad
MAC), a stale or future timestamp, a replayed nonce, an instance the relay does not host (or
whose socket does not answer), and a handshake that does not arrive in time. Nothing of a
refused connection reaches an engine: the engine's socket is opened only after every check.

The key (:class:`RelayKey`, 32 random bytes) is the cluster's one secret for this: the gateway
loads or creates it in ``<runtime_dir>/relay.key`` (mode 0600, hex) and every node's relay is
given the same. It is never part of an endpoint, a log line or an error message.

This is authentication, not encryption: the bytes after the handshake are the engine's plain
HTTP, as between the gateway and a local engine. The cluster's network between the gateway and
its nodes is trusted not to be read; the relay only ensures no one but the gateway is let in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import inspect
import logging
import os
import secrets
import socket
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aigc_gateway.runtime.base import RELAYED_ID, Endpoint

__all__ = [
    "KEY_FILE",
    "RelayKey",
    "RelayRefused",
    "RelayServer",
    "Resolve",
    "connect_relayed",
    "hello_frame",
    "serve_relay",
]

log = logging.getLogger(__name__)

KEY_FILE = "relay.key"
"""The key's file name under the gateway's ``runtime_dir``."""

MAGIC = b"AIGCRLY\x01"  # the magic and the version, one 8-byte word
_HEAD = struct.Struct("!8sQ16sB")  # magic+version, timestamp ms, nonce, id length
_MAC_SIZE = 32
_HELLO_CONTEXT = b"aigc-relay hello\x00"
_REPLY_CONTEXT = b"aigc-relay reply\x00"
_OK, _REFUSED = 0, 1
_NO_NONCE = bytes(16)
_CHUNK = 256 * 1024

Resolve = Callable[[str], "str | Awaitable[str | None] | None"]
"""The Unix socket path of an instance the relay hosts, or None (sync or async)."""


class RelayRefused(ConnectionRefusedError):
    """The relay did not let this connection through; ``reason`` says why in a few words (an
    ``OSError``, so every connector treats it as an engine it cannot reach)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the node relay refused the connection: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True, repr=False)
class RelayKey:
    """The cluster's relay key: 32 random bytes, shared by the gateway and every node's relay.
    Its ``repr`` and :attr:`fingerprint` never show it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a relay key is 32 bytes")

    def __repr__(self) -> str:
        return f"RelayKey(fingerprint={self.fingerprint})"

    @classmethod
    def generate(cls) -> RelayKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_hex(cls, text: str) -> RelayKey:
        """The key as :meth:`hex` writes it (how a node's relay is given it)."""
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError:
            raise ValueError("a relay key is 64 hexadecimal digits") from None

    def hex(self) -> str:
        return self.secret.hex()

    @property
    def fingerprint(self) -> str:
        """Which key this is, for logs (two sides that disagree show different ones); reveals
        nothing of the key."""
        return hashlib.sha256(b"aigc-relay fingerprint\x00" + self.secret).hexdigest()[:12]

    @classmethod
    def load(cls, path: Path) -> RelayKey:
        """The key in ``path``; ``PermissionError`` when others than its owner may read it,
        ``ValueError`` when it is not a key."""
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & 0o077:
                raise PermissionError(
                    f"the relay key {path} may be read by others (mode {mode & 0o777:o}): "
                    f"chmod 600 {path}"
                )
            return cls.from_hex(file.read().decode("ascii", "replace"))

    @classmethod
    def load_or_create(cls, path: Path) -> RelayKey:
        """The key in ``path``, created (mode 0600) when there is none; its folder is made with
        the default mode (the runtime's own folder: engines' uids may need to pass through it).
        Safe when several processes do it at once: the file appears whole or not at all (it is
        written aside and linked into place), and all of them end with the same key."""
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".relay-key-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(cls.generate().hex() + "\n")
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first: its key
                os.link(aside, path)
        finally:
            os.unlink(aside)
        return cls.load(path)

    def _mac(self, context: bytes, data: bytes) -> bytes:
        return hmac.new(self.secret, context + data, hashlib.sha256).digest()


def hello_frame(
    key: RelayKey, instance_id: str, *, now: float | None = None, nonce: bytes | None = None
) -> bytes:
    """The client's handshake frame for ``instance_id`` (``now``, ``nonce``: for tests; a fresh
    random nonce and the wall clock otherwise)."""
    if not RELAYED_ID.fullmatch(instance_id):
        raise ValueError(f"not an instance id a relay can name: {instance_id!r}")
    nonce = secrets.token_bytes(16) if nonce is None else nonce
    stamp = int((time.time() if now is None else now) * 1000)
    body = _HEAD.pack(MAGIC, stamp, nonce, len(instance_id)) + instance_id.encode("ascii")
    return body + key._mac(_HELLO_CONTEXT, body)


def _reply(key: RelayKey, nonce: bytes, status: int, reason: str) -> bytes:
    text = reason.encode("ascii", "replace")[:255]
    body = bytes((status, len(text))) + text
    return body + key._mac(_REPLY_CONTEXT, nonce + body)


async def connect_relayed(
    endpoint: Endpoint, key: RelayKey, *, timeout_s: float | None
) -> socket.socket:
    """A connected, non-blocking socket to the engine behind a relay endpoint, past the
    handshake: what is sent on it from now on reaches the engine. :class:`RelayRefused` when the
    relay refuses (or cannot prove it holds the key), ``OSError`` when it cannot be reached,
    ``TimeoutError`` after ``timeout_s`` (the connection and the handshake together; None: no
    limit but the caller's)."""
    if endpoint.relay_for is None or endpoint.host is None or endpoint.port is None:
        raise ValueError(f"not a relay endpoint: {endpoint.describe}")
    return await asyncio.wait_for(_connect(endpoint, key), timeout_s)


async def _connect(endpoint: Endpoint, key: RelayKey) -> socket.socket:
    assert endpoint.host is not None and endpoint.port is not None
    assert endpoint.relay_for is not None
    loop = asyncio.get_running_loop()
    hello = hello_frame(key, endpoint.relay_for)
    nonce = _HEAD.unpack_from(hello)[2]
    infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {endpoint.host}")
    failure: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            await loop.sock_sendall(sock, hello)
            await _read_reply(loop, sock, key, nonce)
        except BaseException:
            sock.close()
            raise
        return sock
    assert failure is not None
    raise failure


async def _read_reply(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, key: RelayKey, nonce: bytes
) -> None:
    # Exactly the reply's bytes are read: whatever follows is the engine's, left in the socket.
    head = await _recv_exactly(loop, sock, 2)
    rest = await _recv_exactly(loop, sock, head[1] + _MAC_SIZE)
    reason, mac = rest[: head[1]], rest[head[1] :]
    if not hmac.compare_digest(mac, key._mac(_REPLY_CONTEXT, nonce + head + reason)):
        raise RelayRefused("the relay's answer does not carry this gateway's key")
    if head[0] != _OK:
        raise RelayRefused(reason.decode("ascii", "replace") or "refused")


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        part = await loop.sock_recv(sock, n - len(data))
        if not part:
            raise RelayRefused("the relay closed the connection during the handshake")
        data += part
    return bytes(data)


class _Nonces:
    """Nonces seen, each kept until its handshake's timestamp leaves the window (after which the
    timestamp check refuses a replay anyway)."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []

    def first_time(self, nonce: bytes, until: float, now: float) -> bool | None:
        """True when ``nonce`` is new (then remembered until ``until``), False when seen; None
        when too many are remembered to take another."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if nonce in self._seen:
            return False
        if len(self._seen) >= self._most:
            return None
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (until, nonce))
        return True


class _Refusal(Exception):
    def __init__(self, reason: str, nonce: bytes = _NO_NONCE, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.nonce, self.detail = reason, nonce, detail


class RelayServer:
    """A running relay: :attr:`host` and :attr:`port` it listens on. ``close`` stops accepting;
    ``aclose`` (or leaving ``async with``) also ends the connections it relays."""

    def __init__(
        self,
        key: RelayKey,
        resolve: Resolve,
        *,
        handshake_timeout_s: float,
        window_s: float,
        clock: Callable[[], float],
        max_nonces: int,
    ) -> None:
        self._key, self._resolve = key, resolve
        self._handshake_timeout_s, self._window_s, self._clock = (
            handshake_timeout_s,
            window_s,
            clock,
        )
        self._nonces = _Nonces(max_nonces)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host, self.port = "", 0

    async def _start(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self._accepted, host, port, limit=_CHUNK)
        self._server = server
        self.host, self.port = server.sockets[0].getsockname()[:2]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self) -> None:
        self.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RelayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:  # one connection's failure ends it, not the relay
            log.exception("relay connection from %s failed", peer)
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                instance_id, nonce = await self._hello(reader)
                path = await self._where(instance_id, nonce)
                try:
                    engine_reader, engine_writer = await asyncio.open_unix_connection(
                        path, limit=_CHUNK
                    )
                except OSError as exc:
                    raise _Refusal(
                        "instance not reachable", nonce, f"{instance_id}: {exc}"
                    ) from None
        except TimeoutError:
            await self._refuse(writer, peer, _Refusal("no handshake in time"))
            return
        except asyncio.IncompleteReadError:
            await self._refuse(writer, peer, _Refusal("incomplete handshake"))
            return
        except _Refusal as refusal:
            await self._refuse(writer, peer, refusal)
            return
        writer.write(_reply(self._key, nonce, _OK, ""))
        log.debug("node relay: %s to instance %s", peer, instance_id)
        await _splice(reader, writer, engine_reader, engine_writer)

    async def _refuse(self, writer: asyncio.StreamWriter, peer: object, refusal: _Refusal) -> None:
        detail = f" ({refusal.detail})" if refusal.detail else ""
        log.warning("node relay refused %s: %s%s", peer, refusal.reason, detail)
        with contextlib.suppress(OSError):
            writer.write(_reply(self._key, refusal.nonce, _REFUSED, refusal.reason))
            writer.close()
            await writer.wait_closed()

    async def _hello(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        head = await reader.readexactly(_HEAD.size)
        magic, stamp, nonce, size = _HEAD.unpack(head)
        if magic != MAGIC:
            raise _Refusal("not a relay handshake")
        if not 1 <= size <= 128:
            raise _Refusal("bad handshake")
        rest = await reader.readexactly(size + _MAC_SIZE)
        raw_id, mac = rest[:size], rest[size:]
        if not hmac.compare_digest(mac, self._key._mac(_HELLO_CONTEXT, head + raw_id)):
            # The id is only the peer's claim here: logged as its bytes' repr, never trusted.
            raise _Refusal(
                "bad credential",
                detail=f"claimed instance {raw_id!r}; this relay's key {self._key.fingerprint}",
            )
        instance_id = raw_id.decode("ascii", "replace")
        if not RELAYED_ID.fullmatch(instance_id):
            raise _Refusal("bad handshake", nonce)
        now = self._clock()
        sent = stamp / 1000
        if abs(now - sent) > self._window_s:
            raise _Refusal("stale handshake", nonce, f"{instance_id}: {now - sent:+.0f} s")
        fresh = self._nonces.first_time(nonce, sent + self._window_s, now)
        if fresh is None:
            raise _Refusal("busy", nonce, "too many recent handshakes")
        if not fresh:
            raise _Refusal("replayed handshake", nonce, instance_id)
        return instance_id, nonce

    async def _where(self, instance_id: str, nonce: bytes) -> str:
        found = self._resolve(instance_id)
        path = await found if inspect.isawaitable(found) else found
        if path is None:
            raise _Refusal("unknown instance", nonce, instance_id)
        return path


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    engine_reader: asyncio.StreamReader,
    engine_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both directions have ended; a failure of either ends both."""
    ways = [
        asyncio.create_task(_copy(client_reader, engine_writer)),
        asyncio.create_task(_copy(engine_reader, client_writer)),
    ]
    try:
        done, _ = await asyncio.wait(ways, return_when=asyncio.FIRST_EXCEPTION)
        if any(not t.cancelled() and t.exception() is not None for t in done):
            client_writer.transport.abort()
            engine_writer.transport.abort()
        await asyncio.gather(*ways, return_exceptions=True)
    finally:
        for task in ways:
            task.cancel()
        for writer in (client_writer, engine_writer):
            writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction: each chunk is written once the previous one drained (the reader's own
    buffer is bounded, so a slow receiver slows the sender), then the end is passed on."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def serve_relay(
    host: str,
    port: int,
    key: RelayKey,
    resolve: Resolve,
    *,
    handshake_timeout_s: float = 5.0,
    window_s: float = 60.0,
    clock: Callable[[], float] = time.time,
    max_nonces: int = 200_000,
) -> RelayServer:
    """Listen on ``host``:``port`` (0: a free port; the server's :attr:`RelayServer.port` says
    which) and relay each authenticated connection to the socket ``resolve`` names (see the
    module docstring for the handshake and what is refused). ``clock`` is the wall clock the
    handshake's timestamp is checked against (nodes' clocks agree within ``window_s``)."""
    relay = RelayServer(
        key,
        resolve,
        handshake_timeout_s=handshake_timeout_s,
        window_s=window_s,
        clock=clock,
        max_nonces=max_nonces,
    )
    await relay._start(host, port)
    return relay
