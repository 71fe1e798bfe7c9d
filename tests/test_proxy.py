"""The gateway's own streaming proxy: engines on their own hosts, through the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.support.hosts import browser_for

# Both proxies serve instance traffic (proxy/front.py, and the ASGI one it hands over to):
# each behaviour here must hold on either.
pytestmark = pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])

HTML = {"Accept": "text/html,application/xhtml+xml"}


async def signed_in_browser(gw: RunningGateway, user: str, password: str) -> httpx.AsyncClient:
    browser = browser_for(gw.url, follow_redirects=True, timeout=60)
    r = await browser.post(
        f"{gw.url}/auth/login", data={"username": user, "password": password, "next": "/api/me"}
    )
    assert r.status_code == 200
    return browser


async def open_through_gateway(browser: httpx.AsyncClient, inst: dict[str, Any]) -> httpx.Response:
    """Open the instance's URL as a browser: the gateway hands the browser over to the instance
    host (one-time token → instance cookie) and the engine answers."""
    return await browser.get(inst["url"], headers=HTML)


def cookie_for(browser: httpx.AsyncClient, host: str) -> str:
    return next(
        c.value for c in browser.cookies.jar if c.name == "aigc_instance" and c.domain == host
    )


def instance_websocket(host: str, port: int, cookie: str, **options: Any) -> websockets.connect:
    """The demo engine's WebSocket on its instance host, through the gateway on ``port``."""
    return websockets.connect(
        f"ws://{host}:{port}/ws",
        host="127.0.0.1",
        port=port,
        additional_headers={"Cookie": f"aigc_instance={cookie}"},
        **options,
    )


@pytest.fixture
async def demo(alice: Api) -> dict[str, Any]:
    inst = await alice.wait_state((await alice.create("demo"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    return inst


async def test_open_an_instance_and_talk_to_the_engine(
    gateway: RunningGateway, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        page = await open_through_gateway(browser, demo)
        assert page.status_code == 200 and "Demo engine" in page.text
        assert str(page.url) == demo["url"]
        assert len(page.headers.get_list("date")) == 1 and len(page.headers.get_list("server")) <= 1
        host = httpx.URL(demo["url"]).host
        browser.cookies.set("theme", "dark", domain=host)
        echo = (
            await browser.get(
                f"{demo['url']}api/echo",
                headers={
                    "Authorization": "Bearer agw_gateway_token_not_for_engines",
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Host": "evil.example",
                    "X-Aigc-User": "admin",
                },
            )
        ).json()
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        assert set(echo["cookies"]) == {"theme"}  # no gateway or instance cookie reaches the engine
        assert "authorization" not in headers
        assert headers["x-aigc-user"] == "alice"  # not the spoofed one
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-host"] == httpx.URL(demo["url"]).netloc.decode()
        assert headers["host"] == httpx.URL(demo["url"]).netloc.decode()
    finally:
        await browser.aclose()


async def test_sse_streams_through_without_buffering(
    gateway: RunningGateway, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, demo)
        job = (await browser.post(f"{demo['url']}api/generate", json={"prompt": "fox"})).json()[
            "job"
        ]
        kinds = []
        async with browser.stream("GET", f"{demo['url']}api/jobs/{job}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kinds.append(line.split(":", 1)[1].strip())
        assert kinds[0] == "progress" and kinds[-1] == "done" and len(kinds) > 3
    finally:
        await browser.aclose()


async def test_websocket_relay_text_binary_and_close(
    gateway: RunningGateway, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, demo)
        host = httpx.URL(demo["url"]).host
        port = httpx.URL(gateway.url).port
        cookie = cookie_for(browser, host)
        async with instance_websocket(host, port, cookie) as ws:
            await ws.send(json.dumps({"type": "ping", "n": 1}))
            assert json.loads(await ws.recv())["type"] == "pong"
            latency = await asyncio.wait_for(await ws.ping(b"are you there"), 10)
            assert latency >= 0  # a protocol-level ping answered by the engine's pong
            payload = bytes(range(256)) * 64
            await ws.send(payload)
            assert await ws.recv() == payload
            await ws.send(json.dumps({"type": "generate", "prompt": "owl"}))
            seen = []
            while not seen or seen[-1] != "done":
                seen.append(json.loads(await ws.recv())["type"])
            assert "progress" in seen
        # The subprotocol is negotiated with the engine, and its close code passes through.
        async with instance_websocket(host, port, cookie, subprotocols=["demo.v1"]) as ws:
            assert ws.subprotocol == "demo.v1"
            await ws.send(json.dumps({"type": "close", "code": 4001}))
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4001
        # Without the instance cookie the handshake is refused.
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"ws://{host}:{port}/ws", host="127.0.0.1", port=port):
                pass
        assert refused.value.response.status_code == 403
    finally:
        await browser.aclose()


async def test_streamed_upload_and_download(gateway: RunningGateway, demo: dict[str, Any]) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, demo)
        chunk = hashlib.sha256(b"x").digest() * 32768  # 1 MiB
        digest = hashlib.sha256()

        async def body() -> Any:
            for _ in range(64):
                digest.update(chunk)
                yield chunk

        r = await browser.post(
            f"{demo['url']}api/upload", params={"name": "model.bin"}, content=body()
        )
        assert r.status_code == 200, r.text
        assert r.json()["size"] == 64 * 2**20 and r.json()["sha256"] == digest.hexdigest()
        size = 0
        async with browser.stream("GET", f"{demo['url']}api/download/64") as download:
            async for part in download.aiter_bytes():
                size += len(part)
        assert size == 64 * 2**20
    finally:
        await browser.aclose()


async def test_signing_out_revokes_the_instance_cookie_at_once(
    gateway: RunningGateway, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        assert (await open_through_gateway(browser, demo)).status_code == 200
        assert (await browser.get(f"{demo['url']}api/outputs")).status_code == 200
        csrf = (await browser.get(f"{gateway.url}/api/me")).json()["csrf_token"]
        await browser.post(f"{gateway.url}/auth/logout", headers={"X-CSRF-Token": csrf})
        assert (await browser.get(f"{demo['url']}api/outputs")).status_code == 401
    finally:
        await browser.aclose()


async def test_an_open_websocket_ends_when_access_ends(
    gateway: RunningGateway, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, demo)
        host, port = httpx.URL(demo["url"]).host, httpx.URL(gateway.url).port
        async with instance_websocket(host, port, cookie_for(browser, host)) as ws:
            await ws.send(json.dumps({"type": "ping", "n": 1}))
            assert json.loads(await ws.recv())["type"] == "pong"
            csrf = (await browser.get(f"{gateway.url}/api/me")).json()["csrf_token"]
            await browser.post(f"{gateway.url}/auth/logout", headers={"X-CSRF-Token": csrf})
            # Signing out revokes the instance cookie; the socket opened with it is closed too.
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(_drain(ws), 15)
    finally:
        await browser.aclose()


async def _drain(ws: websockets.ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_another_user_cannot_open_it(
    gateway: RunningGateway, demo: dict[str, Any], bob: Api
) -> None:
    intruder = await signed_in_browser(gateway, "bob", "pw-bob")
    try:
        page = await open_through_gateway(intruder, demo)
        assert page.status_code == 404 and "Demo engine" not in page.text
        assert not [c for c in intruder.cookies.jar if c.name == "aigc_instance"]
        # Bob's own instance cookie does not open Alice's host.
        mine = await bob.create("tiny")
        await bob.wait_state(mine["id"], "running")
        await open_through_gateway(intruder, mine)
        stolen = cookie_for(intruder, httpx.URL(mine["url"]).host)
        async with browser_for(gateway.url) as raw:
            r = await raw.get(
                f"{demo['url']}api/echo", headers={"Cookie": f"aigc_instance={stolen}"}
            )
            assert r.status_code == 401
            # A spoofed Host or X-Forwarded-Host never selects an instance.
            r = await raw.get(
                f"{gateway.url}/api/echo", headers={"X-Forwarded-Host": httpx.URL(demo["url"]).host}
            )
            assert r.status_code == 404 and "headers" not in r.text
    finally:
        await intruder.aclose()


async def test_a_paused_instance_wakes_on_request(
    gateway: RunningGateway, alice: Api, demo: dict[str, Any]
) -> None:
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, demo)
        await alice.act(demo["id"], "pause")
        await alice.wait_state(demo["id"], "paused")
        page = await browser.get(demo["url"], headers=HTML)
        assert page.status_code == 503
        assert "Starting your engine" in page.text and page.headers["retry-after"] == "2"
        assert "State: Starting" in page.text  # the state after the wake-up, not "Paused"
        icon = re.search(r'<link rel="icon" href="([^"]+)"', page.text)
        assert icon and icon.group(1).startswith("/_aigc/")  # the gateway's, on this host too
        served = await browser.get(f"{demo['url']}{icon.group(1).lstrip('/')}")
        assert served.headers["content-type"].startswith("image/svg+xml")
        browser.cookies.set("lang", "zh-CN", domain=httpx.URL(demo["url"]).host)
        zh = await browser.get(demo["url"], headers=HTML)  # the language the visitor chose
        assert zh.status_code == 503 and "正在启动您的引擎" in zh.text
        assert (await alice.get(demo["id"]))["desired_state"] == "running"
        api = await browser.get(f"{demo['url']}api/outputs")  # an API client gets JSON
        assert api.status_code in (200, 503)
        if api.status_code == 503:
            assert api.json()["code"] == "instance_starting" and "retry-after" in api.headers
        await alice.wait_state(demo["id"], "running")
        page = await browser.get(demo["url"], headers=HTML)
        assert page.status_code == 200 and "Demo engine" in page.text
        # The starting page's live status on the instance host.
        status = (await browser.get(f"{demo['url']}_aigc/status")).json()
        assert status["state"] == "running"
        # An API client waking it gets the state after the wake-up too.
        await alice.act(demo["id"], "pause")
        await alice.wait_state(demo["id"], "paused")
        api = await browser.get(f"{demo['url']}api/outputs")
        assert api.status_code == 503 and api.json()["state"] == "starting"
        await alice.wait_state(demo["id"], "running")
    finally:
        await browser.aclose()


async def test_a_failed_instance_says_why(gateway: RunningGateway, alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("crash"))["id"], "failed")
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        page = await open_through_gateway(browser, inst)
        assert page.status_code == 502
        assert "exited with code 3" in page.text and "exit code 3" in page.text
        # In the visitor's language (the engine's own reason stays as it was recorded).
        zh = await browser.get(inst["url"], headers={**HTML, "Accept-Language": "zh-CN,zh;q=0.9"})
        assert zh.status_code == 502 and '<html lang="zh-CN">' in zh.text
        assert "实例不可用" in zh.text and "此实例的状态为“失败”" in zh.text
        assert "退出码 3" in zh.text
    finally:
        await browser.aclose()


async def test_engine_cannot_set_gateway_cookies_and_activity_is_recorded(
    gateway: RunningGateway, alice: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    assert inst["last_activity_at"] is None
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, inst)
        r = await browser.get(f"{inst['url']}setcookie")
        cookies = r.headers.get_list("set-cookie")
        assert cookies == ["theme=dark; Path=/"]
    finally:
        await browser.aclose()
    async with asyncio.timeout(20):  # flushed to the store in batches
        while (await alice.get(inst["id"]))["last_activity_at"] is None:
            await asyncio.sleep(0.1)
