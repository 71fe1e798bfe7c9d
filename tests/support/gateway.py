"""Test helpers: templates for the tests' engines, users with tokens, and an API client that
waits for instance states by following the live event stream (no sleeps, no polling loops)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from contextlib import aclosing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database
from aigc_gateway.store.users import create_token, create_user

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "engines" / "tiny.py"


def tiny_template(template_id: str, *extra: str, timeout_s: float = 20, grace: float = 3) -> str:
    args = ", ".join(
        json.dumps(a) for a in ["{python}", str(TINY), "--data-dir", "{data_dir}", *extra]
    )
    return f"""
id: {template_id}
family: {template_id}
version: "1"
display: {{name: {{en: "Tiny {template_id}", zh-CN: "小引擎 {template_id}"}}}}
launch:
  command: [{args}]
  stop_grace_s: {grace}
readiness: {{http: /, timeout_s: {timeout_s}}}
"""


def write_templates(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("demo.yaml", "jupyterlab.yaml", "sd-webui.yaml"):
        shutil.copy(REPO / "templates" / name, folder / name)
    (folder / "tiny.yaml").write_text(tiny_template("tiny"))
    (folder / "tiny-path.yaml").write_text(
        tiny_template("tiny-path") + "access: {path_mode: true}\n"
    )
    (folder / "tiny-idle.yaml").write_text(
        tiny_template("tiny-idle") + "idle: {pause_after_minutes: 0.02}\n"
    )
    (folder / "tiny-gpu.yaml").write_text(
        tiny_template("tiny-gpu") + "resources: {gpu: {count: 1, types: [rtx4090]}}\n"
    )
    (folder / "tiny-quota.yaml").write_text(  # a data quota of 100 KiB (0.0001 GiB ~ 107 kB)
        tiny_template("tiny-quota") + "storage: {quota_gib: 0.0001}\n"
    )
    (folder / "tiny-share.yaml").write_text(
        tiny_template("tiny-share") + "resources: {gpu: {memory_gib: 30}}\n"
    )
    (folder / "tiny-gpu-any.yaml").write_text(
        tiny_template("tiny-gpu-any") + "resources: {gpu: {count: 1}}\n"
    )
    (folder / "tiny-gpu-hi.yaml").write_text(
        tiny_template("tiny-gpu-hi") + "resources: {gpu: {count: 1, priority: 10}}\n"
    )
    (folder / "tiny-gpu-pair.yaml").write_text(
        tiny_template("tiny-gpu-pair") + "resources: {gpu: {count: 2}}\n"
    )
    (folder / "tiny-share-8.yaml").write_text(
        tiny_template("tiny-share-8") + "resources: {gpu: {memory_gib: 8}}\n"
    )
    (folder / "wire.yaml").write_text(  # HTTP/1.1 by hand (tests/engines/wire.py)
        tiny_template("wire").replace(str(TINY), str(TINY.parent / "wire.py"))
    )
    (folder / "crash.yaml").write_text(tiny_template("crash", "--exit-before-ready", "3"))
    (folder / "never-ready.yaml").write_text(
        tiny_template("never-ready", "--no-listen", timeout_s=1)
    )
    (folder / "missing-binary.yaml").write_text(
        tiny_template("missing-binary").replace('"{python}"', '"/nonexistent/engine-binary"', 1)
    )
    (folder / "demo-unix.yaml").write_text(  # the demo engine on a Unix socket of its own
        (REPO / "templates" / "demo.yaml")
        .read_text()
        .replace("id: demo", "id: demo-unix")
        .replace("family: demo", "family: demo-unix")
        .replace('"--port", "{port}"', '"--uds", "{socket}"')
    )
    (folder / "gradio.yaml").write_text(  # a real Gradio app (tests/engines/gradio_app.py)
        f"""
id: gradio
family: gradio
version: "1"
display: {{name: {{en: Gradio test engine, zh-CN: Gradio 测试引擎}}}}
launch:
  command: ["{{python}}", "{REPO / "tests" / "engines" / "gradio_app.py"}", "--port", "{{port}}",
            "--data-dir", "{{data_dir}}"]
  env:
    GRADIO_ANALYTICS_ENABLED: "False"
    GRADIO_TEMP_DIR: "{{data_dir}}/.gradio"
    HF_HUB_OFFLINE: "1"
  requires: ["python:gradio"]
  stop_grace_s: 5
readiness: {{http: /, timeout_s: 60}}
"""
    )
    return folder


TEST_SANDBOX = "auto"
"""The ``sandbox`` setting of the gateways the tests run (here and as processes): every engine
of the suite runs in its sandbox wherever the host supports it (as root with bubblewrap and
cgroups, as CI does), reached over its Unix socket."""


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dev": True,
        "sandbox": TEST_SANDBOX,
        "data_dir": tmp / "data",
        "templates_dir": write_templates(tmp / "templates"),
        "reconcile_interval_s": 0.3,
        "stop_grace_s": 3,
        "max_instances_per_user": 3,
    }
    values.update(overrides)
    return Settings(**values)


async def add_user(settings: Settings, name: str, *, admin: bool = False, scopes: str = "") -> str:
    """Create a user and return an API token for it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    try:
        await db.migrate()
        async with db.write() as session:
            user = await create_user(session, name=name, password="pw-" + name, is_admin=admin)
            return await create_token(session, user=user, name="test", scopes=scopes)
    finally:
        await db.close()


class FakeClock:
    """A clock the test moves by hand (for the ledger: ``ledger_clock`` in conftest)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class Api:
    """An API client for one user."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def create(self, template: str, **body: Any) -> dict[str, Any]:
        r = await self.client.post("/api/instances", json={"template": template, **body})
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    async def get(self, instance_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/instances/{instance_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def act(self, instance_id: str, action: str) -> dict[str, Any]:
        r = await self.client.post(f"/api/instances/{instance_id}/{action}")
        assert r.status_code == 202, r.text
        return dict(r.json())

    async def last_event_id(self, instance_id: str) -> int:
        r = await self.client.get(f"/api/instances/{instance_id}/events")
        assert r.status_code == 200, r.text
        events = r.json()
        return int(events[-1]["id"]) if events else 0

    async def wait_state(
        self, instance_id: str, *states: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Follow the event stream until the instance is in one of ``states``; return it.

        Streams from the newest stored event on, then checks the current state, so a transition
        can be neither missed nor mistaken for an old one."""
        gone = {"id": instance_id, "state": "deleted"}
        if "deleted" in states:
            if (await self.client.get(f"/api/instances/{instance_id}")).status_code == 404:
                return gone
            try:
                return await self._wait_state(instance_id, states, timeout)
            except AssertionError:
                if (await self.client.get(f"/api/instances/{instance_id}")).status_code == 404:
                    return gone
                raise
        return await self._wait_state(instance_id, states, timeout)

    async def _wait_state(
        self, instance_id: str, states: tuple[str, ...], timeout: float
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            after = await self.last_event_id(instance_id)
            async with self.client.stream(
                "GET",
                f"/api/instances/{instance_id}/events/stream",
                params={"after": after},
                timeout=None,
            ) as stream:
                assert stream.status_code == 200
                current = await self.get(instance_id)
                if current["state"] in states:
                    return current
                # aclosing: a return from the loop must close the generator now, not leave its
                # closing to a task the garbage collector schedules (a leaked task).
                async with aclosing(stream.aiter_lines()) as lines:
                    async for line in lines:
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:])
                        if event["kind"] == "transition" and event["to"] in states:
                            if event["to"] == "deleted":
                                return {
                                    "id": instance_id,
                                    "state": "deleted",
                                    "reason": event["message"],
                                }
                            return await self.get(instance_id)
        raise AssertionError("event stream ended")

    async def wait_for(
        self,
        instance_id: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Follow the event stream until ``check(instance)`` holds after some transition (or
        already holds); return the instance."""
        async with asyncio.timeout(timeout):
            after = await self.last_event_id(instance_id)
            async with self.client.stream(
                "GET",
                f"/api/instances/{instance_id}/events/stream",
                params={"after": after},
                timeout=None,
            ) as stream:
                assert stream.status_code == 200
                current = await self.get(instance_id)
                if check(current):
                    return current
                async with aclosing(stream.aiter_lines()) as lines:  # as in _wait_state
                    async for line in lines:
                        if line.startswith("data:") and json.loads(line[5:])["kind"] == (
                            "transition"
                        ):
                            current = await self.get(instance_id)
                            if check(current):
                                return current
        raise AssertionError("event stream ended")

    async def settled(self, instance_id: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the instance is in a stable state matching what is desired."""
        want = {
            "running": ("running", "queued", "failed"),
            "paused": ("paused", "failed"),
            "deleted": ("deleted",),
        }
        current = await self.get(instance_id)
        return await self.wait_state(instance_id, *want[current["desired_state"]], timeout=timeout)


async def engine_endpoint(admin: Api, instance_id: str) -> str:
    """How an instance's engine is reached on this host (``unix:/path`` for a sandboxed one,
    ``host:port`` otherwise), for tests that talk to it directly: only administrators are told
    (users reach engines through the gateway)."""
    found = (await admin.get(instance_id))["engine_endpoint"]
    assert found is not None, "the engine is not running"
    return str(found)


async def engine_client(admin: Api, instance_id: str, **options: Any) -> httpx.AsyncClient:
    """An HTTP client straight to an instance's engine (over its Unix socket where it has one),
    bypassing the gateway: what a test needs to drive or inspect the engine itself."""
    return endpoint_client(await engine_endpoint(admin, instance_id), **options)


def endpoint_client(where: str, **options: Any) -> httpx.AsyncClient:
    """An HTTP client to the engine endpoint ``where`` (``unix:/path`` or ``host:port``)."""
    if where.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=where.removeprefix("unix:"))
        return httpx.AsyncClient(base_url="http://engine", transport=transport, **options)
    return httpx.AsyncClient(base_url=f"http://{where}", **options)


async def stop_engines_async(settings: Settings) -> None:
    """Engines outlive the gateway by design; a test must not leave any behind. The runtime is
    the gateway's own (its sandbox included), so a stop also removes what the sandbox made
    (an outbound engine's network namespace)."""
    from aigc_gateway.runtime.plugins import local

    if not settings.runtime_dir.exists():
        return
    runtime = local(settings)
    try:
        for work in await runtime.list():
            await runtime.stop(work.instance_id, grace=1)
    finally:
        await runtime.close()


def stop_engines(settings: Settings) -> None:
    asyncio.run(stop_engines_async(settings))
