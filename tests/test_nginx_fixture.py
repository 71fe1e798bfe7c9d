"""deploy/nginx/aigc-gateway.conf in a real nginx, against a stand-in for the gateway.

The stand-in answers the forward-auth contract with fixed rules (cookie ``aigc_instance=good``
passes, ``bad`` is refused, none means "sign in"), and a tiny echo engine reports what reached
it, so these tests check nginx's part alone: redirects, the handover passthrough, what an
engine gets (and never gets), uploads, WebSockets and unbuffered event streams. The real gateway
behind the same config is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import websockets.sync.client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.support.nginx import NginxFront, error_log_on_failure, nginx_in_front, require_nginx
from tests.support.server import serve_in_thread

PUBLIC_GATEWAY = "https://gateway.example.test"
IDENTITY = {
    "x-aigc-user": "alice",
    "x-aigc-user-id": "u1",
    "x-aigc-instance": "i1",
}


# --- the echo engine --------------------------------------------------------------------------


def _headers(raw: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in raw]


def engine_app() -> Starlette:
    triggers: dict[str, asyncio.Event] = {}

    def trigger(name: str) -> asyncio.Event:
        return triggers.setdefault(name, asyncio.Event())

    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": _headers(request.headers.raw),
                "body_length": len(body),
            }
        )

    async def events(request: Request) -> Response:
        """One event, then (once the test has seen it and POSTs /trigger) a second, then the end."""
        name = request.query_params["id"]

        async def stream() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            await asyncio.wait_for(trigger(name).wait(), 30)
            yield b"data: two\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def set_trigger(request: Request) -> Response:
        trigger(request.query_params["id"]).set()
        return Response(status_code=204)

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({"headers": _headers(websocket.headers.raw)}))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await websocket.send_text("echo: " + str(message.get("text")))

    return Starlette(
        routes=[
            WebSocketRoute("/ws", ws_echo),
            Route("/sse", events),
            Route("/trigger", set_trigger, methods=["POST"]),
            Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


# --- the stand-in gateway (forward auth + handover) --------------------------------------------


@dataclass
class AuthCalls:
    forward: list[dict[str, Any]] = field(default_factory=list)
    handover: list[dict[str, Any]] = field(default_factory=list)


def _first_cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def auth_app(engine_netloc: str, calls: AuthCalls) -> Starlette:
    async def forward(request: Request) -> Response:
        calls.forward.append({"headers": _headers(request.headers.raw)})
        host = urlsplit(request.headers.get("x-original-url", "")).hostname or ""
        if not host.endswith(".localhost"):
            return Response(status_code=403)
        cookie = _first_cookie(request.headers.get("cookie", ""), "aigc_instance")
        if cookie is None:
            return Response(status_code=401)
        if cookie != "good":
            return Response(status_code=403)
        return Response(status_code=200, headers={**IDENTITY, "x-aigc-upstream": engine_netloc})

    async def handover(request: Request) -> Response:
        calls.handover.append(
            {"headers": _headers(request.headers.raw), "query": request.url.query}
        )
        if request.query_params.get("token") != "t":
            return Response(status_code=403)
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            return Response(status_code=400)
        return Response(
            status_code=302,
            headers={"location": target, "set-cookie": "aigc_instance=good; Path=/; HttpOnly"},
        )

    return Starlette(routes=[Route("/auth/forward", forward), Route("/_aigc/handover", handover)])


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Stack:
    front: NginxFront
    engine_url: str
    calls: AuthCalls

    def url(self, path: str, host: str = "i1.localhost") -> str:
        return self.front.url_for_host(host) + path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_nginx()
    calls = AuthCalls()
    with (
        serve_in_thread(engine_app()) as engine_url,
        serve_in_thread(auth_app(urlsplit(engine_url).netloc, calls)) as auth_url,
        nginx_in_front(gateway_url=auth_url, public_gateway_url=PUBLIC_GATEWAY) as front,
    ):
        yield Stack(front, engine_url, calls)


@pytest.fixture(autouse=True)
def _nginx_log_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    with error_log_on_failure(request, stack.front):
        yield


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(transport=stack.front.transport(), timeout=10) as c:
        yield c


def header(pairs: list[list[str]], name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_not_signed_in_goes_to_the_gateway_sign_in_with_the_url_encoded(
    stack: Stack, client: httpx.Client, method: str
) -> None:
    original = stack.url("/lab/tree/a%20b.ipynb?x=1&y=a+b&z=%2F%26~")
    r = client.request(method, original, content=b"x" * 10 if method == "POST" else None)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location == f"{PUBLIC_GATEWAY}/auth/instance-login?rd={quote(original, safe='')}"
    assert parse_qs(urlsplit(location).query) == {"rd": [original]}
    asked = stack.calls.forward[-1]["headers"]
    assert header(asked, "x-original-url") == [original]
    assert header(asked, "x-original-method") == [method]
    assert header(asked, "content-length") == []  # the body stays with nginx


def test_handover_reaches_the_gateway_with_the_host_and_sets_the_instance_cookie(
    stack: Stack, client: httpx.Client
) -> None:
    asked_before = len(stack.calls.forward)
    r = client.get(stack.url("/_aigc/handover?token=t&next=/lab%3Fa%3D1"))
    assert r.status_code == 302
    assert r.headers["location"] == "/lab?a=1"
    assert r.headers["set-cookie"] == "aigc_instance=good; Path=/; HttpOnly"
    assert len(stack.calls.forward) == asked_before  # no auth_request on /_aigc/
    seen = stack.calls.handover[-1]
    assert seen["query"] == "token=t&next=/lab%3Fa%3D1"
    assert header(seen["headers"], "host") == [f"i1.localhost:{stack.front.port}"]
    assert header(seen["headers"], "x-forwarded-proto") == ["http"]
    assert header(seen["headers"], "x-forwarded-for") == ["127.0.0.1"]
    assert client.cookies.get("aigc_instance", domain="i1.localhost") == "good"

    # The browser follows the redirect and now gets the engine.
    r = client.get(stack.url(r.headers["location"]))
    assert r.status_code == 200
    echo = r.json()
    assert (echo["path"], echo["query"]) == ("/lab", "a=1")
    assert header(echo["headers"], "cookie") == []
    assert header(echo["headers"], "x-aigc-user") == ["alice"]


def test_a_bad_handover_token_is_the_gateway_s_answer(stack: Stack, client: httpx.Client) -> None:
    r = client.get(stack.url("/_aigc/handover?token=nope&next=/"))
    assert r.status_code == 403
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize(
    ("sent", "engine_gets"),
    [
        ("aigc_instance=good", None),
        ("theme=dark; aigc_instance=good", "theme=dark"),
        ("aigc_instance=good; theme=dark", "theme=dark"),
        ("a=1; aigc_instance=good; theme=dark", "a=1; theme=dark"),
        ("theme=dark;aigc_instance=good;a=1", "theme=dark;a=1"),
        (
            "aigc_instance=good; my_aigc_instance=x; aigc_instance2=y; b=aigc_instance=z",
            "my_aigc_instance=x; aigc_instance2=y; b=aigc_instance=z",
        ),
        # Sent twice (another Path or Domain): all cookies are dropped rather than leak one.
        ("aigc_instance=good; theme=dark; aigc_instance=stale", None),
    ],
)
def test_the_engine_gets_the_identity_but_not_the_instance_cookie_or_credentials(
    stack: Stack, client: httpx.Client, sent: str, engine_gets: str | None
) -> None:
    r = client.get(
        stack.url("/api/thing?q=1"),
        headers={
            "Cookie": sent,
            "Authorization": "Bearer secret",
            "X-Aigc-User": "mallory",
            "X-Aigc-Upstream": "127.0.0.1:1",
        },
    )
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/api/thing", "q=1")
    got = echo["headers"]
    assert header(got, "cookie") == ([] if engine_gets is None else [engine_gets])
    assert header(got, "authorization") == []
    assert header(got, "x-aigc-upstream") == []
    for name, value in IDENTITY.items():
        assert header(got, name) == [value]
    assert header(got, "host") == [f"i1.localhost:{stack.front.port}"]
    assert header(got, "x-forwarded-proto") == ["http"]
    # The gateway itself saw the browser's Cookie header as it was.
    assert header(stack.calls.forward[-1]["headers"], "cookie") == [sent]


def test_forbidden_is_forbidden(stack: Stack, client: httpx.Client) -> None:
    r = client.get(stack.url("/"), headers={"Cookie": "aigc_instance=bad; theme=dark"})
    assert r.status_code == 403


def test_a_host_that_is_no_instance_is_forbidden(stack: Stack) -> None:
    with httpx.Client(timeout=10) as c:
        r = c.get(
            f"http://127.0.0.1:{stack.front.port}/",
            headers={"Host": "elsewhere.example", "Cookie": "aigc_instance=good"},
        )
    assert r.status_code == 403
    asked = stack.calls.forward[-1]["headers"]
    assert header(asked, "x-original-url") == ["http://elsewhere.example/"]


def test_forged_forwarding_headers_do_not_reach_the_auth_check(
    stack: Stack, client: httpx.Client
) -> None:
    r = client.get(
        stack.url("/"),
        headers={
            "X-Forwarded-Host": "i2.localhost",
            "X-Forwarded-Uri": "/other",
            "X-Original-URL": "http://i2.localhost/other",
        },
    )
    assert r.status_code == 302
    asked = stack.calls.forward[-1]["headers"]
    assert header(asked, "x-original-url") == [stack.url("/")]
    assert header(asked, "x-forwarded-host") == []
    assert header(asked, "x-forwarded-uri") == []


def test_large_uploads_stream_to_the_engine(stack: Stack, client: httpx.Client) -> None:
    size = 5 * 2**20  # over nginx's default 1 MiB limit
    r = client.post(
        stack.url("/upload"), content=b"\0" * size, headers={"Cookie": "aigc_instance=good"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["body_length"] == size


def test_websocket_through_nginx(stack: Stack) -> None:
    url = f"ws://i1.localhost:{stack.front.port}/ws"
    with websockets.sync.client.connect(
        url,
        sock=stack.front.connect(),
        additional_headers={"Cookie": "theme=dark; aigc_instance=good"},
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert header(hello["headers"], "cookie") == ["theme=dark"]
        assert header(hello["headers"], "x-aigc-user") == ["alice"]
        ws.send("hi")
        assert ws.recv(timeout=10) == "echo: hi"
        ws.send("again")
        assert ws.recv(timeout=10) == "echo: again"


def test_websocket_without_sign_in_is_redirected(stack: Stack, client: httpx.Client) -> None:
    # (websockets' client would try to follow the redirect, so the handshake is sent by hand.)
    r = client.get(
        stack.url("/ws"),
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert r.status_code == 302
    assert r.headers["location"].startswith(f"{PUBLIC_GATEWAY}/auth/instance-login?rd=")


def test_event_streams_are_not_buffered(stack: Stack, client: httpx.Client) -> None:
    name = uuid.uuid4().hex
    with client.stream(
        "GET", stack.url(f"/sse?id={name}"), headers={"Cookie": "aigc_instance=good"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        # The engine sends the second event only after this trigger, so seeing the first one
        # here means nginx passed it on before the stream ended.
        assert next(line for line in lines if line) == "data: one"
        with httpx.Client(timeout=10) as direct:
            assert direct.post(f"{stack.engine_url}/trigger?id={name}").status_code == 204
        assert [line for line in lines if line] == ["data: two"]
