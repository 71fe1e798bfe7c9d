"""Streaming relay of one HTTP request or WebSocket to an engine (aiohttp client upstream).

Bodies are streamed both ways, never buffered whole. A client that goes away cancels the
upstream request. Headers: hop-by-hop headers are dropped, the gateway's own cookies and bearer
tokens never reach the engine, the engine cannot set the gateway's cookies, and the
``X-Forwarded-*`` headers are the gateway's own (a client cannot spoof them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from starlette.types import Receive, Scope, Send

from aigc_gateway.proxy.answers import BAD_ANSWER, TIMEOUT, TOO_LARGE, UNREACHABLE
from aigc_gateway.proxy.wire import downstream, forwardable, forwarded_for

log = logging.getLogger(__name__)

SET_BY_SERVER = frozenset({b"date", b"server"})
"""The gateway's server adds its own; relaying the engine's would send them twice."""


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Limits:
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 3600.0
    max_body_bytes: int = 0
    """0: no limit (models and datasets are large)."""


def upstream_headers(
    scope: Scope, *, user_name: str, host: str, prefix: str | None, websocket: bool = False
) -> list[tuple[str, str]]:
    client = scope.get("client")
    headers = forwardable(scope["headers"], websocket=websocket) + forwarded_for(
        client_ip=client[0] if client else "",
        scheme=scope.get("scheme", "http"),
        host=host,
        user_name=user_name,
        prefix=prefix,
    )
    return [(name.decode("latin-1"), _text(value)) for name, value in headers]


def _text(value: bytes) -> str:
    # aiohttp writes header values as UTF-8: UTF-8 bytes (a user's name) must arrive unchanged.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def downstream_headers(headers: aiohttp.typedefs.LooseHeaders) -> list[tuple[bytes, bytes]]:
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers.items()  # type: ignore[union-attr]
    ]
    return [(name, value) for name, value in downstream(raw) if name not in SET_BY_SERVER]


def target_url(scope: Scope, base: str, *, websocket: bool = False) -> str:
    """The engine's URL for the request: ``base`` (``http://host:port``, or
    ``http://localhost`` for a Unix socket) and the request's path and query."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    if websocket:
        base = "ws" + base.removeprefix("http")
    url = f"{base}{path.decode('latin-1')}"
    return url + (f"?{query.decode('latin-1')}" if query else "")


async def relay_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    session: aiohttp.ClientSession,
    base: str,
    headers: list[tuple[str, str]],
    limits: Limits,
    error: Callable[[int, str], tuple[str, bytes]],
) -> None:
    """Relay one request to the engine at ``base`` (see :func:`target_url`) through
    ``session``. ``error(status, message)`` gives the content type and body of the
    answer when the engine fails before answering."""
    method = scope["method"]
    has_body = any(n in ("content-length", "transfer-encoding") for n, _ in headers) or method in (
        "POST",
        "PUT",
        "PATCH",
    )
    body_read = asyncio.Event()
    too_large = False
    declared = next((v for n, v in headers if n == "content-length"), None)
    if (
        limits.max_body_bytes
        and declared
        and declared.isdigit()
        and int(declared) > limits.max_body_bytes
    ):
        content_type, payload = error(413, _explain(BodyTooLarge())[1])
        await _send_error(send, 413, content_type, payload)
        return

    async def body() -> AsyncIterator[bytes]:
        nonlocal too_large
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if limits.max_body_bytes and total > limits.max_body_bytes:
                too_large = True
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        body_read.set()

    if not has_body:
        body_read.set()
    timeout = aiohttp.ClientTimeout(
        total=None, connect=limits.connect_timeout_s, sock_read=limits.read_timeout_s
    )
    started = False

    # The request runs in this task; one watcher task cancels it if the client goes away
    # (cheaper than running the exchange in a task of its own and waiting on both).
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def client_left() -> None:
        nonlocal gone
        await body_read.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        this.cancel()

    watch = asyncio.create_task(client_left())
    try:
        async with session.request(
            method,
            target_url(scope, base),
            headers=headers,
            data=body() if has_body else None,
            allow_redirects=False,
            auto_decompress=False,
            timeout=timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": downstream_headers(response.headers),
                }
            )
            started = True
            if method != "HEAD":
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        this.uncancel()  # the client left: nothing more to say to anyone
    except ClientGone:
        return
    except Exception as failure:
        if started:
            raise  # mid-stream: the server closes the connection
        status, text = _explain(BodyTooLarge() if too_large else failure)
        content_type, payload = error(status, text)
        await _send_error(send, status, content_type, payload)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def _send_error(send: Send, status: int, content_type: str, payload: bytes) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _explain(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, BodyTooLarge):
        return 413, TOO_LARGE
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return 502, UNREACHABLE
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return 504, TIMEOUT
    log.warning("proxy error: %s", type(exc).__name__)
    return 502, BAD_ANSWER


async def relay_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    session: aiohttp.ClientSession,
    base: str,
    headers: list[tuple[str, str]],
    limits: Limits,
    on_message: Callable[[], None],
    revoked: asyncio.Event | None = None,
) -> None:
    """Relay a WebSocket: text and binary frames both ways, close codes passed through,
    subprotocol negotiated with the engine, back-pressure by awaiting each send. When
    ``revoked`` is set (access ended) the client is closed with 1008 (policy violation)."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    try:
        upstream_ws = await session.ws_connect(
            target_url(scope, base, websocket=True),
            protocols=tuple(scope.get("subprotocols") or ()),
            headers=headers,
            autoping=True,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.info("engine refused the WebSocket: %s", type(exc).__name__)
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept", "subprotocol": upstream_ws.protocol})

    async def to_engine() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                if message.get("text") is not None:
                    await upstream_ws.send_str(message["text"])
                else:
                    await upstream_ws.send_bytes(message.get("bytes") or b"")
                on_message()
            elif message["type"] == "websocket.disconnect":
                await upstream_ws.close(code=message.get("code", 1000))
                return

    async def to_client() -> None:
        async for message in upstream_ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": message.data})
            elif message.type is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": message.data})
            else:
                break
            on_message()
        code = upstream_ws.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code if code != 1006 else 1011})

    tasks = [asyncio.create_task(to_engine()), asyncio.create_task(to_client())]
    ended = asyncio.Event() if revoked is None else revoked
    waiting = asyncio.create_task(ended.wait())
    try:
        await asyncio.wait([*tasks, waiting], return_when=asyncio.FIRST_COMPLETED)
        if ended.is_set():
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008})
    finally:
        waiting.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream_ws.close()
