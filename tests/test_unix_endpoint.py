"""An engine reached over a Unix socket (its endpoint ``unix:/path``, no TCP port anywhere), the
way a sandboxed engine is: through the real gateway on both proxy paths, plain HTTP, a streamed
answer and a WebSocket; readiness over the socket; and a ``kill -9`` of the gateway process, after
which the engine is re-adopted and still reachable through the gateway."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets

from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.gateway import Api, add_user, make_settings, stop_engines_async, write_templates
from tests.support.hosts import browser_for
from tests.support.process import gateway_process

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A data folder short enough for a Unix socket path (at most 107 bytes) under it."""
    folder = Path(tempfile.mkdtemp(prefix="aigc-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def gateway_settings(short_tmp: Path, proxy_fast_path: bool) -> Settings:
    return make_settings(short_tmp, proxy_fast_path=proxy_fast_path)


async def signed_in(url: str, user: str) -> httpx.AsyncClient:
    browser = browser_for(url, follow_redirects=True, timeout=60)
    r = await browser.post(
        f"{url}/auth/login", data={"username": user, "password": f"pw-{user}", "next": "/api/me"}
    )
    assert r.status_code == 200
    return browser


def engine_listens_on_no_port(pid: int) -> bool:
    """No process of the engine (the wrapper's children) has a listening inet socket."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return not any(
        c.status == psutil.CONN_LISTEN for p in tree for c in p.net_connections(kind="inet")
    )


async def running_unix(api: Api, admin: Api) -> tuple[dict[str, Any], Endpoint]:
    inst = await api.wait_state((await api.create("demo-unix"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    seen = await admin.get(inst["id"])
    assert seen["engine_url"] is None  # there is no TCP address to give
    endpoint = Endpoint.parse(seen["engine_endpoint"])
    assert endpoint.unix_path is not None and Path(endpoint.unix_path).is_socket()
    assert inst.get("engine_endpoint") is None  # engine-internal: administrators only
    return inst, endpoint


@pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])
async def test_an_engine_on_a_unix_socket_serves_through_the_gateway(
    gateway: RunningGateway, alice: Api, admin: Api
) -> None:
    inst, _ = await running_unix(alice, admin)
    events = (await admin.client.get(f"/api/instances/{inst['id']}/events")).json()
    pid = [e["data"]["pid"] for e in events if "pid" in e["data"]][-1]
    assert engine_listens_on_no_port(pid)
    browser = await signed_in(gateway.url, "alice")
    try:
        page = await browser.get(inst["url"], headers=HTML)
        assert page.status_code == 200 and "Demo engine" in page.text
        echo = (await browser.get(f"{inst['url']}api/echo")).json()
        assert echo["headers"]["x-aigc-user"] == "alice"
        # A streamed answer (server-sent events) arrives in parts.
        job = (await browser.post(f"{inst['url']}api/generate", json={"prompt": "fox"})).json()
        kinds = []
        async with browser.stream("GET", f"{inst['url']}api/jobs/{job['job']}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kinds.append(line.split(":", 1)[1].strip())
        assert kinds[0] == "progress" and kinds[-1] == "done"
        # A WebSocket, relayed to the engine's socket.
        host, port = httpx.URL(inst["url"]).host, httpx.URL(gateway.url).port
        cookie = next(
            c.value for c in browser.cookies.jar if c.name == "aigc_instance" and c.domain == host
        )
        async with websockets.connect(
            f"ws://{host}:{port}/ws",
            host="127.0.0.1",
            port=port,
            additional_headers={"Cookie": f"aigc_instance={cookie}"},
        ) as ws:
            await ws.send(json.dumps({"type": "ping", "n": 1}))
            assert json.loads(await ws.recv())["type"] == "pong"
            await ws.send(bytes(range(256)))
            assert await ws.recv() == bytes(range(256))
    finally:
        await browser.aclose()


async def test_a_unix_engine_is_readopted_after_the_gateway_is_killed(
    short_tmp: Path, listener: socket.socket
) -> None:
    data, templates = short_tmp / "data", write_templates(short_tmp / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    tokens = [await add_user(settings, "root", admin=True), await add_user(settings, "alice")]
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with gateway_process(data, templates, listener) as gw:
            admin, alice = (Api(url, t) for t in tokens)
            inst, endpoint = await running_unix(alice, admin)
            await admin.aclose()
            await alice.aclose()
            gw.kill()  # SIGKILL: no shutdown code runs
            gw.wait(10)
        # The engine kept serving on its socket without its gateway.
        transport = httpx.AsyncHTTPTransport(uds=endpoint.unix_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as direct:
            assert (await direct.get("/healthz")).status_code == 200
        with gateway_process(data, templates, listener):
            admin = Api(url, tokens[0])
            browser = await signed_in(url, "alice")
            try:
                again = await admin.get(inst["id"])
                assert again["state"] == "running"
                assert again["engine_endpoint"] == endpoint.describe
                page = await browser.get(inst["url"], headers=HTML)
                assert page.status_code == 200 and "Demo engine" in page.text
                await admin.act(inst["id"], "pause")
                await admin.wait_state(inst["id"], "paused")
                assert not Path(str(endpoint.unix_path)).exists() or not (await _answers(endpoint))
            finally:
                await browser.aclose()
                await admin.aclose()
    finally:
        await stop_engines_async(settings)


async def _answers(endpoint: Endpoint) -> bool:
    transport = httpx.AsyncHTTPTransport(uds=endpoint.unix_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as direct:
        try:
            await direct.get("/healthz")
        except httpx.TransportError:
            return False
        return True
