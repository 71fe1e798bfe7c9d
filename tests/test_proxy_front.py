"""The connection-level proxy (``proxy/front.py``) on the wire: raw client sockets in front, a
hand-written HTTP/1.1 engine behind (``tests/engines/wire.py``), the real gateway between.

What a framework-level client would hide is asserted byte for byte: connection reuse to the
engine, framing of every body kind, interim answers, HEAD, pipelining, a pooled connection
closed under a request, timeouts, malformed framing, and hand-over of a connection to the ASGI
app in the middle of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.test_proxy import cookie_for, open_through_gateway, signed_in_browser

pytestmark = pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One client connection to the gateway, speaking as a browser on the instance host."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, cookie: str
    ) -> None:
        self.reader, self.writer = reader, writer
        self.host, self.cookie = host, cookie
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Answer:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("Host", self.host), ("Cookie", f"aigc_instance={self.cookie}"), *extra]
        if body:
            headers.append(("Content-Length", str(len(body))))
        self.writer.write(self.h11.send(h11.Request(method=method, target=target, headers=headers)))
        if body:
            self.writer.write(self.h11.send(h11.Data(data=body)))
        self.writer.write(self.h11.send(h11.EndOfMessage()))
        return await self.answer()

    async def answer(self) -> Answer:
        interim: list[int] = []
        status, headers, body = 0, {}, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await asyncio.wait_for(self.reader.read(65536), 30))
            elif isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Answer(status, headers, body, interim)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the answer ended")

    async def closed(self) -> bool:
        """Whether the gateway closes this connection (read until EOF)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except ConnectionError:
            return True

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class Wire:
    gateway: RunningGateway
    inst: dict[str, Any]
    host: str
    cookie: str
    clients: list[Client] = field(default_factory=list)

    async def client(self) -> Client:
        url = httpx.URL(self.gateway.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        client = Client(reader, writer, self.host, self.cookie)
        self.clients.append(client)
        return client

    async def raw(self, data: bytes) -> bytes:
        """Send ``data`` as it is on a new connection; everything until the gateway closes."""
        url = httpx.URL(self.gateway.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(data)
            return await asyncio.wait_for(reader.read(-1), 30)
        finally:
            writer.close()


@pytest.fixture
async def wire(gateway: RunningGateway, alice: Api) -> AsyncIterator[Wire]:
    inst = await alice.wait_state((await alice.create("wire"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        assert (await open_through_gateway(browser, inst)).status_code == 200
        host = httpx.URL(inst["url"]).netloc.decode()
        found = Wire(gateway, inst, host, cookie_for(browser, httpx.URL(inst["url"]).host))
    finally:
        await browser.aclose()
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()


async def test_engine_connections_are_pooled_and_reused(wire: Wire) -> None:
    one, two = await wire.client(), await wire.client()
    first = (await one.request("GET", "/conn")).json()
    again = (await one.request("GET", "/conn")).json()
    other = (await two.request("GET", "/conn")).json()
    # Requests from two client connections, one after another, ride one engine connection.
    assert again["connection"] == first["connection"] == other["connection"]
    assert [again["request"], other["request"]] == [first["request"] + 1, first["request"] + 2]


async def test_every_kind_of_body_arrives_whole(wire: Wire) -> None:
    client = await wire.client()
    chunked = await client.request("GET", "/chunked")
    assert chunked.body == b"one,two,three"
    assert chunked.headers.get("transfer-encoding") == "chunked"
    until_close = await client.request("GET", "/until-close")
    assert until_close.body == b"all of it, until the end"
    # A body the engine ended by closing its connection is re-framed for the client, whose
    # connection stays usable.
    assert until_close.headers.get("transfer-encoding") == "chunked"
    assert (await client.request("GET", "/")).body == b"ok"
    payload = bytes(range(256)) * 8192  # 2 MiB
    echo = (await client.request("POST", "/echo", body=payload)).json()
    assert echo["length"] == len(payload)
    assert echo["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_interim_answers_and_head(wire: Wire, proxy_fast_path: bool) -> None:
    client = await wire.client()
    hinted = await client.request("GET", "/early-hints")
    assert hinted.status == 200 and hinted.body == b"after the hints"
    # 1xx answers are passed on at the connection level; ASGI has no way to send them.
    assert hinted.interim == ([103] if proxy_fast_path else [])
    head = await client.request("HEAD", "/anything")
    assert head.status == 200 and head.headers["content-length"] == "1234" and head.body == b""
    assert (await client.request("GET", "/")).body == b"ok"  # nothing of HEAD's was left over


async def test_pipelined_requests_are_answered_in_order(wire: Wire) -> None:
    head = f"Host: {wire.host}\r\nCookie: aigc_instance={wire.cookie}\r\n"
    data = await wire.raw(
        f"GET /conn HTTP/1.1\r\n{head}\r\n"
        f"GET /echo?second HTTP/1.1\r\n{head}\r\n"
        f"GET /conn HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode()
    )
    assert data.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = (
        data.index(b'"request"'),
        data.index(b"/echo?second"),
        data.rindex(b'"request"'),
    )
    assert first < second < third


async def test_a_request_that_arrives_in_pieces(wire: Wire) -> None:
    body = b"x" * 3000
    request = (
        f"POST /echo HTTP/1.1\r\nHost: {wire.host}\r\nCookie: aigc_instance={wire.cookie}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    end = request.index(b"\r\n\r\n")
    # Cut inside the request line, inside the blank line that ends the head, inside the body.
    cuts = [0, 7, end + 2, end + 5, end + 1000, len(request)]
    url = httpx.URL(wire.gateway.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        for start, stop in itertools.pairwise(cuts):
            writer.write(request[start:stop])
            await writer.drain()
            await asyncio.sleep(0.02)  # separate TCP segments (the answer does not depend on it)
        answer = await asyncio.wait_for(reader.read(-1), 30)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    echo = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert echo["length"] == len(body) and echo["sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_pooled_connection_closed_under_a_request(wire: Wire) -> None:
    client = await wire.client()
    before = (await client.request("GET", "/conn")).json()
    assert (await client.request("GET", "/close-next")).status == 200
    # The engine closes that connection when the next request arrives on it, unanswered: a
    # request without a body is sent again on a new connection, and the client never knows.
    after = (await client.request("GET", "/conn")).json()
    assert after["connection"] != before["connection"]
    # A request with a body is not repeated (the engine may have acted on it): a clear 502.
    assert (await client.request("GET", "/close-next")).status == 200
    refused = await client.request("POST", "/echo", body=b"only once")
    assert refused.status == 502 and refused.json()["code"] == "engine_unavailable"
    assert (await client.request("GET", "/")).body == b"ok"


@pytest.mark.parametrize("gateway_settings", [{"proxy_read_timeout_s": 1}], indirect=True)
async def test_an_engine_that_does_not_answer_in_time(wire: Wire) -> None:
    client = await wire.client()
    late = await client.request("GET", "/sleep?s=5")
    assert late.status == 504 and late.json()["code"] == "engine_timeout"
    page = await client.request("GET", "/sleep?s=5", extra=(("Accept", "text/html"),))
    assert page.status == 504 and b"<html" in page.body
    zh = await client.request(
        "GET", "/sleep?s=5", extra=(("Accept", "text/html"), ("Accept-Language", "zh-CN"))
    )
    assert zh.status == 504 and "引擎没有及时响应" in zh.body.decode()


async def test_the_client_decides_when_its_connection_ends(
    wire: Wire, proxy_fast_path: bool
) -> None:
    client = await wire.client()
    closing = await client.request("GET", "/", extra=(("Connection", "close"),))
    assert closing.body == b"ok" and closing.headers.get("connection") == "close"
    assert await client.closed()
    old = await wire.raw(
        f"GET /until-close HTTP/1.0\r\nHost: {wire.host}\r\n"
        f"Cookie: aigc_instance={wire.cookie}\r\n\r\n".encode()
    )
    assert old.startswith(b"HTTP/1.1 200") and b"all of it, until the end" in old
    if proxy_fast_path:  # HTTP/1.0 has no chunked framing: the body ends with the connection
        assert old.endswith(b"\r\n\r\nall of it, until the end")


async def test_ambiguous_framing_never_reaches_the_engine(wire: Wire) -> None:
    cookie = f"Cookie: aigc_instance={wire.cookie}\r\n"
    for framing in (
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
    ):
        answer = await wire.raw(
            f"POST /echo HTTP/1.1\r\nHost: {wire.host}\r\n{cookie}{framing}\r\nhello\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


async def test_a_connection_moves_to_the_gateway_app_and_stays_correct(wire: Wire) -> None:
    client = await wire.client()
    assert (await client.request("GET", "/")).body == b"ok"
    # The instance host's own gateway paths are the app's: the same connection is handed over.
    own = await client.request("GET", "/_aigc/no-such-page")
    assert own.status == 404
    echo = (await client.request("GET", "/echo")).json()  # relayed by the ASGI proxy now
    assert echo["method"] == "GET"
    assert not any(name == "cookie" and "aigc_instance" in value for name, value in echo["headers"])


def _seen(echo: dict[str, Any], name: str) -> list[str]:
    """The values of one header (any spelling: ``_`` read as ``-``) the engine received."""
    return [v for n, v in echo["headers"] if n.replace("_", "-") == name]


async def test_a_connection_option_never_unframes_a_body(wire: Wire) -> None:
    # `Connection: keep-alive, content-length` once removed the body's length from the head the
    # engine got: it read the body as a second request the gateway never rewrote, and that
    # request's answer went to the next client on the pooled engine connection.
    attacker, victim = await wire.client(), await wire.client()
    before = (await attacker.request("GET", "/conn")).json()
    smuggled = (
        f"GET /echo HTTP/1.1\r\nHost: {wire.host}\r\nX-Aigc-User: bob\r\n"
        f"X-Forwarded-For: 203.0.113.9\r\nCookie: aigc_instance={wire.cookie}\r\n"
        "Authorization: Bearer agw_stolen\r\n\r\n"
    ).encode()
    echo = (
        await attacker.request(
            "POST", "/echo", body=smuggled, extra=(("Connection", "keep-alive, content-length"),)
        )
    ).json()
    assert echo["length"] == len(smuggled)  # the body arrived as this request's body
    assert echo["sha256"] == hashlib.sha256(smuggled).hexdigest()
    assert _seen(echo, "content-length") == [str(len(smuggled))]
    # The engine connection carried no third request, and the next client gets its own answer.
    after = (await victim.request("GET", "/conn")).json()
    assert after == {"connection": before["connection"], "request": before["request"] + 2}


async def test_look_alikes_of_the_gateways_headers_never_reach_the_engine(wire: Wire) -> None:
    client = await wire.client()
    echo = (
        await client.request(
            "GET",
            "/echo",
            extra=(
                ("X_Aigc_User", "bob"),
                ("x_aigc_user", "bob"),
                ("X-Aigc_User", "bob"),
                ("x_forwarded_for", "203.0.113.9"),
                ("X_Forwarded_Proto", "https"),
                ("X_Real_IP", "203.0.113.9"),
                ("My_Header", "kept"),
            ),
        )
    ).json()
    assert _seen(echo, "x-aigc-user") == ["alice"]  # the gateway's, and only that
    assert _seen(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert _seen(echo, "x-forwarded-proto") == ["http"]
    assert _seen(echo, "x-real-ip") == ["127.0.0.1"]
    assert _seen(echo, "my-header") == ["kept"]


BEARER_SPELLINGS = ("Bearer  {}", "bearer {}", "BEARER\t{}", "Bearer \t {}")


async def test_the_gateways_token_never_reaches_the_engine_however_written(
    wire: Wire, alice: Api
) -> None:
    token = alice.client.headers["authorization"].split()[1]
    async with httpx.AsyncClient(base_url=wire.gateway.url) as api:
        for spelling in BEARER_SPELLINGS:
            # What the gateway's API accepts as alice's credential ...
            me = await api.get("/api/me", headers={"Authorization": spelling.format(token)})
            assert me.status_code == 200 and me.json()["name"] == "alice", spelling
    client = await wire.client()
    for spelling in BEARER_SPELLINGS:
        sent = (("Authorization", spelling.format(token)),)
        echo = (await client.request("GET", "/echo", extra=sent)).json()
        assert _seen(echo, "authorization") == [], spelling  # ... the proxy strips
    own = (("Authorization", "Bearer engine-own-token"),)  # an engine's own credential passes
    echo = (await client.request("GET", "/echo", extra=own)).json()
    assert _seen(echo, "authorization") == ["Bearer engine-own-token"]


async def test_a_clients_forwarding_headers_are_not_believed(wire: Wire) -> None:
    client = await wire.client()
    forged = (("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"))
    echo = (await client.request("GET", "/echo", extra=forged)).json()
    assert _seen(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert _seen(echo, "x-forwarded-proto") == ["http"]


@pytest.mark.parametrize("gateway_settings", [{"trusted_proxies": ["127.0.0.0/8"]}], indirect=True)
async def test_a_trusted_proxys_forwarding_headers_are_believed(wire: Wire, admin: Api) -> None:
    client = await wire.client()
    forwarded = (("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"))
    echo = (await client.request("GET", "/echo", extra=forwarded)).json()
    assert _seen(echo, "x-forwarded-for") == ["203.0.113.9"]
    assert _seen(echo, "x-forwarded-proto") == ["https"]
    async with httpx.AsyncClient(base_url=wire.gateway.url) as browser:
        await browser.post(
            "/auth/login",
            data={"username": "nobody", "password": "wrong"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    audit = (await admin.client.get("/api/audit", params={"action": "auth.login"})).json()
    assert [e["ip"] for e in audit if e["actor"] == "nobody"] == ["203.0.113.9"]
