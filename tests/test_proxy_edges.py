"""Proxy edge cases: client disconnects, engines that vanish, size limits, path mode, idle pause."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.test_proxy import HTML, open_through_gateway, signed_in_browser

# Both proxies serve instance traffic (proxy/front.py, and the ASGI one it hands over to):
# each behaviour here must hold on either.
pytestmark = pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])


def volume(gw: RunningGateway, family: str) -> Path:
    return next(gw.settings.volumes_dir.glob(f"*/{family}"))


async def until(predicate: object, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_client_disconnect_cancels_the_upstream_request(
    gateway: RunningGateway, alice: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, inst)
        async with browser.stream("GET", f"{inst['url']}stream") as stream:
            first = await stream.aiter_bytes().__anext__()
            assert first.startswith(b"tick")
        # The client went away mid-stream: the gateway drops the engine's connection too.
        marker = volume(gateway, "tiny") / "stream-closed"
        await until(marker.exists)
    finally:
        await browser.aclose()


async def test_an_engine_that_vanishes_gives_a_clear_error_not_a_hang(
    gateway: RunningGateway, alice: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, inst)
        events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
        pgid = [e["data"]["pid"] for e in events if "pid" in e["data"]][-1]
        os.killpg(pgid, signal.SIGKILL)
        r = await browser.get(f"{inst['url']}read", params={"name": "x"}, timeout=15)
        assert r.status_code == 502
        assert r.json()["code"] in ("engine_unavailable", "proxy_error")
        page = await browser.get(f"{inst['url']}", headers=HTML, timeout=15)
        assert page.status_code == 502 and "<html" in page.text
    finally:
        await browser.aclose()


@pytest.mark.parametrize("gateway_settings", [{"proxy_max_body_bytes": 1024}], indirect=True)
async def test_request_body_limit(gateway: RunningGateway, alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("demo"))["id"], "running")
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        await open_through_gateway(browser, inst)
        small = await browser.post(
            f"{inst['url']}api/upload", params={"name": "a"}, content=b"x" * 100
        )
        assert small.status_code == 200
        big = await browser.post(
            f"{inst['url']}api/upload", params={"name": "b"}, content=b"x" * 5000
        )
        assert big.status_code == 413
        assert big.json()["code"] == "body_too_large"
    finally:
        await browser.aclose()


async def test_path_mode_for_engines_that_allow_it(
    gateway: RunningGateway, alice: Api, bob: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny-path"))["id"], "running")
    browser = await signed_in_browser(gateway, "alice", "pw-alice")
    try:
        r = await browser.get(f"{gateway.url}/i/{inst['slug']}/prefix")
        assert r.status_code == 200 and r.text == f"/i/{inst['slug']}"
    finally:
        await browser.aclose()
    intruder = await signed_in_browser(gateway, "bob", "pw-bob")
    try:
        assert (await intruder.get(f"{gateway.url}/i/{inst['slug']}/prefix")).status_code == 403
    finally:
        await intruder.aclose()
    async with httpx.AsyncClient() as anon:
        r = await anon.get(f"{gateway.url}/i/{inst['slug']}/prefix")
        assert r.status_code == 401
    # Templates without path mode are not served under /i/.
    other = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {gateway.alice}"}) as api:
        assert (await api.get(f"{gateway.url}/i/{other['slug']}/prefix")).status_code == 404


async def test_idle_instances_are_paused_and_data_kept(gateway: RunningGateway, alice: Api) -> None:
    inst = await alice.create("tiny-idle")
    await alice.wait_state(inst["id"], "running")
    paused = await alice.wait_state(inst["id"], "paused", timeout=30)
    assert paused["desired_state"] == "paused"
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    assert any("idle" in e["message"] for e in events if e["kind"] == "action")
