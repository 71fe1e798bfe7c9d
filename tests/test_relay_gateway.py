"""End to end: an instance whose route is a relay endpoint (``relay:host:port/<id>``), served
through the gateway's own proxy on both paths (the connection-level front and the ASGI
fallback): a page, an echo of the request, a streamed answer and a WebSocket.

The runtime here is the local one (a real demo engine on a Unix socket of its own) that reports
each engine behind a node relay it runs on 127.0.0.1, with the key from the gateway's own
``<runtime_dir>/relay.key``, as a runtime of several nodes does for engines on other nodes."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from aigc_gateway.runtime import plugins
from aigc_gateway.runtime.base import Endpoint, GpuDiscovery, LaunchSpec, Runtime, Workload
from aigc_gateway.runtime.relay import KEY_FILE, RelayKey, RelayServer, serve_relay
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.gateway import Api, make_settings
from tests.support.hosts import browser_for

HTML = {"Accept": "text/html,application/xhtml+xml"}


class RelayedRuntime:
    """The local runtime, its engines' endpoints given as a node relay's (which it runs)."""

    name = "relayed"

    def __init__(self, settings: Settings) -> None:
        self._local = plugins.local(settings)
        self.volumes = self._local.volumes
        self._key_path = settings.runtime_dir / KEY_FILE
        self._relay: RelayServer | None = None
        self._starting = asyncio.Lock()

    def __getattr__(self, name: str) -> Any:  # isolation and the like: the local runtime's
        return getattr(self._local, name)

    async def _resolve(self, instance_id: str) -> str | None:
        work = await self._local.observe(instance_id)
        return None if work.endpoint is None else work.endpoint.unix_path

    async def _relayed(self, work: Workload) -> Workload:
        if work.endpoint is None:
            return work
        async with self._starting:
            if self._relay is None:
                key = RelayKey.load_or_create(self._key_path)
                self._relay = await serve_relay("127.0.0.1", 0, key, self._resolve)
        relayed = Endpoint(host="127.0.0.1", port=self._relay.port, relay_for=work.instance_id)
        return work.with_phase(work.phase, endpoint=relayed)

    async def start(self, spec: LaunchSpec) -> Workload:
        return await self._relayed(await self._local.start(spec))

    async def wait_ready(self, instance_id: str, *, timeout: float) -> Workload:
        return await self._relayed(await self._local.wait_ready(instance_id, timeout=timeout))

    async def stop(self, instance_id: str, *, grace: float) -> Workload:
        return await self._relayed(await self._local.stop(instance_id, grace=grace))

    async def observe(self, instance_id: str) -> Workload:
        return await self._relayed(await self._local.observe(instance_id))

    async def list(self) -> list[Workload]:
        return [await self._relayed(w) for w in await self._local.list()]

    async def logs(
        self, instance_id: str, *, lines: int | None = None, tail_bytes: int = 8192
    ) -> str:
        return await self._local.logs(instance_id, lines=lines, tail_bytes=tail_bytes)

    async def forget(self, instance_id: str) -> None:
        await self._local.forget(instance_id)

    async def gpus(self) -> GpuDiscovery:
        return await self._local.gpus()

    async def suspend(self, instance_id: str) -> Workload:
        return await self._relayed(await self._local.suspend(instance_id))

    async def resume(self, instance_id: str) -> Workload:
        return await self._relayed(await self._local.resume(instance_id))

    async def close(self) -> None:
        if self._relay is not None:
            await self._relay.aclose()
        await self._local.close()


def make_runtime(settings: Settings) -> Runtime:
    return RelayedRuntime(settings)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A data folder short enough for a Unix socket path (at most 107 bytes) under it."""
    folder = Path(tempfile.mkdtemp(prefix="aigc-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def gateway_settings(
    short_tmp: Path, proxy_fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setitem(plugins.BUILT_IN, "relayed", f"{__name__}:make_runtime")
    return make_settings(short_tmp, proxy_fast_path=proxy_fast_path, runtime="relayed")


@pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])
async def test_an_engine_behind_a_node_relay_serves_through_the_gateway(
    gateway: RunningGateway, alice: Api, admin: Api
) -> None:
    inst = await alice.wait_state((await alice.create("demo-unix"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    endpoint = Endpoint.parse((await admin.get(inst["id"]))["engine_endpoint"])
    assert endpoint.relay_for == inst["id"] and endpoint.host == "127.0.0.1"
    assert (await admin.get(inst["id"]))["engine_url"] is None  # nothing to open directly
    browser = browser_for(gateway.url, follow_redirects=True, timeout=60)
    try:
        r = await browser.post(
            f"{gateway.url}/auth/login",
            data={"username": "alice", "password": "pw-alice", "next": "/api/me"},
        )
        assert r.status_code == 200
        page = await browser.get(inst["url"], headers=HTML)
        assert page.status_code == 200 and "Demo engine" in page.text
        echo = (await browser.get(f"{inst['url']}api/echo")).json()
        assert echo["headers"]["x-aigc-user"] == "alice"
        job = (await browser.post(f"{inst['url']}api/generate", json={"prompt": "fox"})).json()
        kinds = []
        async with browser.stream("GET", f"{inst['url']}api/jobs/{job['job']}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kinds.append(line.split(":", 1)[1].strip())
        assert kinds[0] == "progress" and kinds[-1] == "done"
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
