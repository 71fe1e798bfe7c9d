"""The connection-level proxy's reuse of a pooled engine connection, on the wire (front only:
the ASGI relay's client sends a request's head with its first body bytes, so an engine cannot
answer it before the body)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.test_proxy_front import Wire, wire

__all__ = ["wire"]  # the fixture, shared with test_proxy_front

pytestmark = pytest.mark.parametrize("proxy_fast_path", [True], ids=["front"])


async def test_an_engine_connection_that_answered_before_the_body_is_not_reused(
    wire: Wire, proxy_fast_path: bool
) -> None:
    # The engine answers before the body is sent: whether it read that body as a body is not
    # known, so its connection must not carry the next client's request (it may still owe an
    # answer to a request it found in the body).
    smuggled = f"GET /stolen HTTP/1.1\r\nHost: {wire.host}\r\n\r\n".encode()
    url = httpx.URL(wire.gateway.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            f"POST /answer-first HTTP/1.1\r\nHost: {wire.host}\r\n"
            f"Cookie: aigc_instance={wire.cookie}\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode()
        )
        seen = b""
        while b"answered" not in seen:  # the answer has begun; the body is not sent yet
            seen += await asyncio.wait_for(reader.read(65536), 30)
        writer.write(smuggled)
        seen += await asyncio.wait_for(reader.read(-1), 30)  # the gateway then closes
    finally:
        writer.close()
    assert seen.startswith(b"HTTP/1.1 200") and seen.endswith(b"0\r\n\r\n")
    victim = await wire.client()
    answer = await victim.request("GET", "/conn")
    assert b"/stolen" not in answer.body and "connection" in answer.json()  # its own answer
