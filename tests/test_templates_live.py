"""The template folder is re-read on change, and the API's fixed points exist."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import httpx

from tests.conftest import RunningGateway
from tests.support.gateway import Api, add_user, tiny_template, write_templates
from tests.support.process import gateway_process


async def _template_ids(api: Api) -> set[str]:
    return {t["id"] for t in (await api.client.get("/api/templates")).json()["templates"]}


async def _until_listed(api: Api, template_id: str, timeout: float = 20) -> None:
    """Wait (bounded) for the catalog to show ``template_id``: the reload is asynchronous."""
    async with asyncio.timeout(timeout):
        while template_id not in await _template_ids(api):
            await asyncio.sleep(0.05)


async def test_a_new_template_file_is_picked_up_without_a_restart(
    gateway: RunningGateway, alice: Api
) -> None:
    assert "fresh" not in await _template_ids(alice)
    (gateway.settings.templates_dir / "fresh.yaml").write_text(tiny_template("fresh"))
    await _until_listed(alice, "fresh")
    inst = await alice.wait_state((await alice.create("fresh"))["id"], "running")
    assert inst["template_id"] == "fresh"


async def test_sighup_reloads_the_templates(tmp_path: Path, listener: socket.socket) -> None:
    from aigc_gateway.settings import Settings

    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    token = await add_user(Settings(dev=True, data_dir=data, templates_dir=templates), "alice")
    port = listener.getsockname()[1]
    # With the file watcher off (as on network file systems without inotify), only the signal
    # can reveal the new file.
    with gateway_process(data, templates, listener, AIGC_WATCH_TEMPLATES="false") as gw:
        api = Api(f"http://127.0.0.1:{port}", token)
        try:
            (templates / "hup.yaml").write_text(tiny_template("hup"))
            assert "hup" not in await _template_ids(api)
            gw.send_signal(signal.SIGHUP)
            await _until_listed(api, "hup")
        finally:
            await api.aclose()


async def test_openapi_and_health_are_served(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        spec = (await client.get("/openapi.json")).json()
        assert "/api/instances" in spec["paths"]
        assert "/api/instances/{instance_id}/events/stream" in spec["paths"]
        assert (await client.get("/docs")).status_code == 200
        health = (await client.get("/healthz")).json()
        assert health == {
            "ok": True,
            "version": health["version"],
            "checks": {"store": True, "runtime": True, "controller": True},
            "details": {"sandbox": health["details"]["sandbox"]},
        }
        sandbox = health["details"]["sandbox"]
        # The warning is there exactly when engines are not isolated.
        assert ("warning" in sandbox) is (not sandbox["isolated"]) and sandbox["detail"]
