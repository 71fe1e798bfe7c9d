"""InvokeAI (from PyPI, unmodified, shipped template) through the gateway's proxy, on its
instance host: its UI in Chromium, its REST API, socket.io over long-polling and WebSocket, an
image upload and fetch, a model-free graph with its progress events, and pause/resume with its
database and images intact."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import Page, Request, Response, WebSocket, expect
from tests.conftest import RunningGateway
from tests.support.browser import chromium, context, shot
from tests.support.gateway import Api, engine_endpoint
from tests.test_dashboard_browser import sign_in
from tests.test_proxy import cookie_for, open_through_gateway, signed_in_browser

from tests_engines.conftest import START_TIMEOUT_S
from tests_engines.socketio import SocketIO

pytestmark = [pytest.mark.timeout(START_TIMEOUT_S + 300), pytest.mark.slow]

EVENT_TIMEOUT_S = 120  # one small graph on a busy CPU


@dataclass
class Engine:
    """A signed-in client on the instance host (it holds the instance cookie)."""

    client: httpx.AsyncClient
    url: str
    cookie: str

    def socket(self) -> SocketIO:
        return SocketIO(client=self.client, base_url=self.url, cookie=self.cookie)


@asynccontextmanager
async def engine(gw: RunningGateway, inst: dict[str, Any]) -> AsyncIterator[Engine]:
    browser = await signed_in_browser(gw, "alice", "pw-alice")
    try:
        opened = await open_through_gateway(browser, inst)
        assert opened.status_code == 200, opened.text[:300]
        browser.base_url = httpx.URL(inst["url"])
        yield Engine(browser, inst["url"], cookie_for(browser, httpx.URL(inst["url"]).host))
    finally:
        await browser.aclose()


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGB").tobytes()


async def upload(eng: Engine, data: bytes, name: str) -> dict[str, Any]:
    r = await eng.client.post(
        "api/v1/images/upload",
        params={"image_category": "user", "is_intermediate": "false"},
        files={"file": (name, data, "image/png")},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def fetch_image(eng: Engine, image_name: str) -> bytes:
    r = await eng.client.get(f"api/v1/images/i/{image_name}/full")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "image/png"
    return r.content


async def image_names(eng: Engine) -> list[str]:
    r = await eng.client.get("api/v1/images/", params={"limit": 1000})
    assert r.status_code == 200, r.text[:300]
    return sorted(i["image_name"] for i in r.json()["items"])


def model_free_graph(color: dict[str, int]) -> dict[str, Any]:
    """blank_image → img_resize → img_blur: three nodes that need no model (nor GPU)."""
    nodes = {
        "blank": {"type": "blank_image", "width": 64, "height": 48, "color": color},
        "resize": {"type": "img_resize", "width": 32, "height": 24},
        "blur": {"type": "img_blur", "radius": 2, "is_intermediate": False},
    }
    for node_id, node in nodes.items():
        node.update(id=node_id, use_cache=False)  # run every node, every time
        node.setdefault("is_intermediate", True)
    edges = [
        {
            "source": {"node_id": a, "field": "image"},
            "destination": {"node_id": b, "field": "image"},
        }
        for a, b in (("blank", "resize"), ("resize", "blur"))
    ]
    graph = {"id": f"g-{uuid.uuid4().hex[:8]}", "nodes": nodes, "edges": edges}
    return {"batch": {"graph": graph, "runs": 1}, "prepend": False}


async def run_graph(eng: Engine, sio: SocketIO) -> list[tuple[str, dict[str, Any]]]:
    """Enqueue the model-free graph and collect this item's events until it ends."""
    r = await eng.client.post(
        "api/v1/queue/default/enqueue_batch",
        json=model_free_graph({"r": 200, "g": 30, "b": 30, "a": 255}),
    )
    assert r.status_code == 200, r.text
    [item_id] = r.json()["item_ids"]
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for name, data in sio.events():
            if isinstance(data, dict) and data.get("item_id") == item_id:
                seen.append((name, data))
                if name == "queue_item_status_changed" and data["status"] in (
                    "completed",
                    "failed",
                ):
                    return seen
    raise AssertionError("socket.io ended before the queue item did")


# --- the UI --------------------------------------------------------------------------------


async def test_ui_loads_in_chromium_with_no_failed_request(
    gateway: RunningGateway, invokeai: dict[str, Any]
) -> None:
    failed: list[str] = []
    sockets: list[WebSocket] = []

    def on_failed(request: Request) -> None:
        failed.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.request.method} {response.url}: HTTP {response.status}")

    async with chromium() as browser, context(browser) as ctx:
        dashboard = await ctx.new_page()
        await sign_in(dashboard, gateway, "alice", "pw-alice")
        await dashboard.close()  # its own event stream ends here, aborted by design
        page: Page = await ctx.new_page()  # the browser is signed in: the cookie is shared
        page.on("requestfailed", on_failed)
        page.on("response", on_response)
        page.on("websocket", lambda ws: sockets.append(ws))
        async with page.expect_websocket(lambda ws: "/ws/socket.io/" in ws.url, timeout=120_000):
            await page.goto(invokeai["url"])
        # The app's launchpad and its boards panel, both filled from the REST API.
        await expect(page.get_by_text("Generate images from text prompts")).to_be_visible(
            timeout=120_000
        )
        await expect(page.get_by_text("Uncategorized").first).to_be_visible()
        await page.wait_for_load_state("networkidle")
        await shot(page, "invokeai-ui")

    host = httpx.URL(invokeai["url"]).host
    assert page.url.startswith(invokeai["url"])
    # socket.io-client's long-polling handshake succeeded (an error there ends in a failed
    # request), then its upgrade to a WebSocket on the instance host.
    assert any(httpx.URL(ws.url).host == host and "sid=" in ws.url for ws in sockets), [
        ws.url for ws in sockets
    ]
    assert failed == []


# --- REST, socket.io, images ---------------------------------------------------------------


async def test_invokeai_runs_in_its_sandbox(
    gateway: RunningGateway, invokeai: dict[str, Any]
) -> None:
    """InvokeAI, unmodified, in the engine sandbox like every engine: reached on its socket
    (socat bridges it to InvokeAI's port in its own network namespace), running as its user's
    uid, its database in the volume that uid owns."""
    admin = Api(gateway.url, gateway.admin_token)
    try:
        where = await engine_endpoint(admin, invokeai["id"])
    finally:
        await admin.aclose()
    assert where.startswith("unix:"), where
    (volume,) = (gateway.settings.data_dir / "volumes").glob("*/invokeai")
    assert volume.stat().st_uid >= 200000
    databases = list(volume.rglob("invokeai.db"))
    assert databases and all(d.stat().st_uid == volume.stat().st_uid for d in databases)


async def test_rest_api_answers_through_the_instance_host(
    gateway: RunningGateway, invokeai: dict[str, Any]
) -> None:
    async with engine(gateway, invokeai) as eng:
        version = await eng.client.get("api/v1/app/version")
        assert version.status_code == 200
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", version.json()["version"])
        config = await eng.client.get("api/v1/app/runtime_config")
        assert config.status_code == 200, config.text[:300]
        # What the template sets reached the engine (its gzip, which breaks its socket.io
        # long-polling under current Starlette, is off).
        assert {"host", "port", "http_compression_level"} <= set(config.json()["set_fields"])
        assert config.json()["config"]["http_compression_level"] == 0
        board = await eng.client.post("api/v1/boards/", params={"board_name": "through-gw"})
        assert board.status_code == 201, board.text
        listed = await eng.client.get("api/v1/boards/", params={"all": "true"})
        assert board.json()["board_id"] in {b["board_id"] for b in listed.json()}
    # Without the instance cookie the engine is not reached (an API call gets 401, not the
    # sign-in page).
    async with httpx.AsyncClient() as stranger:
        host = httpx.URL(invokeai["url"]).netloc.decode()
        r = await stranger.get(f"{gateway.url}/api/v1/app/version", headers={"Host": host})
    assert r.status_code == 401, r.status_code


async def test_image_upload_and_fetch_keep_the_pixels(
    gateway: RunningGateway, invokeai: dict[str, Any]
) -> None:
    sent = png((10, 120, 240))
    async with engine(gateway, invokeai) as eng:
        dto = await upload(eng, sent, "through-gateway.png")
        assert (dto["width"], dto["height"]) == (40, 30)
        assert pixels(await fetch_image(eng, dto["image_name"])) == pixels(sent)
        thumbnail = await eng.client.get(f"api/v1/images/i/{dto['image_name']}/thumbnail")
        assert thumbnail.status_code == 200
    # It is stored in alice's data folder, under InvokeAI's root.
    [stored] = list(gateway.settings.data_dir.rglob(dto["image_name"]))
    assert pixels(stored.read_bytes()) == pixels(sent)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_model_free_graph_reports_progress_over_socketio(
    gateway: RunningGateway, invokeai: dict[str, Any], transport: str
) -> None:
    async with engine(gateway, invokeai) as eng:
        sio = eng.socket()
        try:
            await sio.connect()
            await sio.emit("subscribe_queue", {"queue_id": "default"})
            if transport == "websocket":
                await sio.upgrade()
            seen = await run_graph(eng, sio)
        finally:
            await sio.aclose()
        assert sio.transports[-1] == transport

        statuses = [d["status"] for n, d in seen if n == "queue_item_status_changed"]
        assert statuses[-1] == "completed", seen[-1]
        nodes = [(n, d["invocation_source_id"]) for n, d in seen if n.startswith("invocation_")]
        for node in ("blank", "resize", "blur"):  # each node started, then completed, in order
            assert nodes.index(("invocation_started", node)) < nodes.index(
                ("invocation_complete", node)
            )
        done = {
            d["invocation_source_id"]: d["result"] for n, d in seen if n == "invocation_complete"
        }
        result = await fetch_image(eng, done["blur"]["image"]["image_name"])
        size, rgb = pixels(result)
        assert size == (32, 24)
        # blank_image's red, through img_resize and img_blur (both shift it by a unit or two).
        red = [rgb[i : i + 3] for i in range(0, len(rgb), 3)]
        assert all(r > 190 and g < 40 and b < 40 for r, g, b in red), red[:4]


# --- pause and resume ----------------------------------------------------------------------


async def test_pause_and_resume_keep_the_database_and_images(
    gateway: RunningGateway, invokeai: dict[str, Any]
) -> None:
    alice = Api(gateway.url, gateway.alice)
    sent = png((250, 200, 0), (20, 20))
    try:
        async with engine(gateway, invokeai) as eng:
            dto = await upload(eng, sent, "before-pause.png")
            board = (await eng.client.post("api/v1/boards/", params={"board_name": "kept"})).json()
            before = await image_names(eng)

        await alice.act(invokeai["id"], "pause")
        paused = await alice.wait_state(invokeai["id"], "paused", "failed", timeout=120)
        assert paused["state"] == "paused", paused.get("reason")
        # While paused, InvokeAI's database and images are files in alice's data folder.
        assert list(gateway.settings.data_dir.rglob("databases/invokeai.db"))
        assert list(gateway.settings.data_dir.rglob(dto["image_name"]))

        await alice.act(invokeai["id"], "resume")
        resumed = await alice.wait_state(
            invokeai["id"], "running", "failed", timeout=START_TIMEOUT_S
        )
        assert resumed["state"] == "running", resumed.get("reason")

        async with engine(gateway, resumed) as eng:
            after = await image_names(eng)
            assert after == before
            assert pixels(await fetch_image(eng, dto["image_name"])) == pixels(sent)
            got = await eng.client.get(f"api/v1/boards/{board['board_id']}")
            assert got.status_code == 200 and got.json()["board_name"] == "kept"
    finally:
        await alice.aclose()
