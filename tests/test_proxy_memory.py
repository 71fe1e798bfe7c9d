"""1 GiB up and 1 GiB down through the gateway's proxy, with the gateway's memory staying flat
(measured on the real `aigc-gateway serve` process)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from aigc_gateway.settings import Settings
from tests.support.gateway import Api, add_user, stop_engines_async, write_templates
from tests.support.hosts import browser_for
from tests.support.process import gateway_process

MiB = 2**20
GiB = 2**30
ALLOWED_GROWTH = 200 * MiB  # generous: buffering a body whole would add > 1 GiB


@pytest.mark.slow
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_one_gib_each_way_with_flat_gateway_memory(
    tmp_path: Path, framing: str, listener: socket.socket
) -> None:
    """A body with a length is relayed at the connection level; a chunked one is handed to the
    ASGI proxy (``proxy/front.py``): both must stream."""
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice")
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        with gateway_process(data, templates, listener, AIGC_PUBLIC_URL=url) as gw:
            await _transfer(url, token, psutil.Process(gw.pid), framing)
    finally:
        await stop_engines_async(settings)


async def _transfer(url: str, token: str, gateway: psutil.Process, framing: str) -> None:
    api = Api(url, token)
    browser = browser_for(url, follow_redirects=True, timeout=600)
    try:
        inst = await api.wait_state((await api.create("demo"))["id"], "running")
        await browser.post(
            f"{url}/auth/login",
            data={"username": "alice", "password": "pw-alice", "next": "/api/me"},
        )
        assert (await browser.get(inst["url"], headers={"Accept": "text/html"})).status_code == 200
        await browser.get(f"{inst['url']}api/download/8")  # warm the pools
        baseline = gateway.memory_info().rss
        peak = baseline
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, gateway.memory_info().rss)
                await asyncio.sleep(0.05)  # a measurement interval, not synchronisation

        sampler = asyncio.create_task(sample())
        chunk = hashlib.sha256(b"model").digest() * (MiB // 32)
        digest = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(GiB // MiB):
                digest.update(chunk)
                yield chunk

        started = time.monotonic()
        length = {"Content-Length": str(GiB)} if framing == "content-length" else {}
        up = await browser.post(
            f"{inst['url']}api/upload", params={"name": "big.bin"}, content=body(), headers=length
        )
        up_s = time.monotonic() - started
        assert up.status_code == 200, up.text
        assert up.json()["size"] == GiB and up.json()["sha256"] == digest.hexdigest()
        started, size = time.monotonic(), 0
        async with browser.stream("GET", f"{inst['url']}api/download/1024") as download:
            async for part in download.aiter_bytes():
                size += len(part)
        down_s = time.monotonic() - started
        done.set()
        await sampler
        assert size == GiB
        growth = peak - baseline
        print(
            f"{framing}: 1 GiB up {GiB / up_s / MiB:.0f} MiB/s, down {GiB / down_s / MiB:.0f} MiB/s; "
            f"gateway RSS {baseline / MiB:.0f} MiB, peak +{growth / MiB:.1f} MiB"
        )
        assert growth < ALLOWED_GROWTH
    finally:
        await browser.aclose()
        await api.aclose()
