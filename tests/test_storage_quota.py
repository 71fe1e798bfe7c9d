"""The storage quota holds for what the engine writes into its data folder (not only uploads):
measured, a warning at 90 % (an instance event and a dashboard notice), new starts refused at
100 % with a clear 409, and nothing ever deleted. The engine (tests/engines/tiny.py) writes its
own files; its family's quota is 0.0001 GiB (107,374 bytes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api, engine_client
from tests.support.hosts import browser_for

QUOTA = int(0.0001 * 1024**3)


async def engine_writes(admin: Api, inst: dict[str, Any], name: str, size: int) -> None:
    """The engine writes ``size`` bytes into its data folder, as files ``name.0``, ``name.1``…"""
    async with await engine_client(admin, inst["id"]) as engine:
        for n, start in enumerate(range(0, size, 40_000)):
            part = "x" * min(40_000, size - start)
            r = await engine.get("/write", params={"name": f"{name}.{n}", "content": part})
            assert r.status_code == 200


async def storage_event(api: Api, instance_id: str, after: int = 0) -> dict[str, Any]:
    """The instance's next ``storage`` event after ``after``, from its live event stream."""
    async with api.client.stream(
        "GET", f"/api/instances/{instance_id}/events/stream", params={"after": after}, timeout=30
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and (event := json.loads(line[5:]))["kind"] == "storage":
                return dict(event)
    raise AssertionError("the event stream ended")


async def page(gateway: RunningGateway, path: str) -> str:
    async with browser_for(gateway.url, follow_redirects=True) as browser:
        r = await browser.post(
            f"{gateway.url}/auth/login",
            data={"username": "alice", "password": "pw-alice", "next": path},
        )
        assert r.status_code == 200
        return r.text


@pytest.mark.parametrize("gateway_settings", [{"storage_check_s": 0}], indirect=True)
async def test_what_the_engine_writes_counts_warned_then_refused_never_deleted(
    gateway: RunningGateway, alice: Api, admin: Api
) -> None:
    inst = await alice.wait_state((await alice.create("tiny-quota"))["id"], "running")
    after = await alice.last_event_id(inst["id"])
    await engine_writes(admin, inst, "a.bin", int(QUOTA * 0.93))
    # The periodic check sees the running engine's folder cross 90 %.
    warned = await storage_event(alice, inst["id"], after)
    assert warned["message"].startswith("storage warning: the tiny-quota data folder uses")
    assert "(93 %)" in warned["message"] and "at 100 % new starts are refused" in warned["message"]
    home = await page(gateway, "/")
    assert 'data-testid="storage-banner" data-family="tiny-quota" data-level="warn"' in home
    # Past the quota: the engine keeps running (nothing is stopped or deleted) ...
    await engine_writes(admin, inst, "b.bin", int(QUOTA * 0.1))
    over = await storage_event(alice, inst["id"], warned["id"])
    assert over["message"].startswith("storage quota reached")
    assert (await alice.get(inst["id"]))["state"] == "running"
    # ... but no new start: not a restart, a resume or another instance of the family.
    refused = await alice.client.post(f"/api/instances/{inst['id']}/restart")
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["code"] == "storage_quota_exceeded"
    assert (
        "the tiny-quota data folder uses 0.00 GiB of its 0.00 GiB quota (103 %)"
        in (body["message"])
    )
    assert "delete files you no longer need in Files (/files/tiny-quota)" in body["message"]
    assert "Nothing was deleted" in body["message"]
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    assert (await alice.client.post(f"/api/instances/{inst['id']}/resume")).status_code == 409
    other = await alice.client.post("/api/instances", json={"template": "tiny-quota"})
    assert (other.status_code, other.json()["code"]) == (409, "storage_quota_exceeded")
    files = await page(gateway, "/files")
    assert 'data-testid="storage-notice-tiny-quota" data-level="over"' in files
    listed = (await alice.client.get("/api/files/tiny-quota")).json()
    assert {e["name"] for e in listed["entries"]} >= {"a.bin.0", "b.bin.0"}  # kept
    # Freeing space lets it start again, with a warning while it stays above 90 %.
    freed = await alice.client.delete("/api/files/tiny-quota/content", params={"path": "b.bin.0"})
    assert freed.status_code == 204
    resumed = await alice.client.post(f"/api/instances/{inst['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    [again] = [e for e in events if e["kind"] == "storage" and e["id"] > over["id"]]
    assert again["message"].startswith("storage warning") and "(93 %)" in again["message"]


async def test_a_family_under_its_quota_starts_without_warnings(alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("tiny-quota"))["id"], "running")
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    assert not [e for e in events if e["kind"] == "storage"]
