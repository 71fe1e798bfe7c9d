"""What one tenant may learn about others, and for how long: the teams directory, event streams
that outlive access, the engine's internal address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.support.hosts import browser_for


async def test_users_see_only_their_own_teams(alice: Api, bob: Api, admin: Api) -> None:
    users = {u["name"]: u["id"] for u in (await admin.client.get("/api/users")).json()}
    for name in ("studio", "secret-project"):
        assert (await admin.client.post("/api/teams", json={"name": name})).status_code == 201
    teams = {t["name"]: t["id"] for t in (await admin.client.get("/api/teams")).json()}
    put = await admin.client.put(f"/api/teams/{teams['studio']}/members/{users['alice']}")
    assert put.status_code == 204

    mine = (await alice.client.get("/api/teams")).json()
    assert [(t["name"], t["members"]) for t in mine] == [("studio", 1)]
    assert (await bob.client.get("/api/teams")).json() == []
    everyone = (await admin.client.get("/api/teams")).json()
    assert {t["name"] for t in everyone} == {"studio", "secret-project"}


# -- event streams end with the access they were opened with ---------------------------------


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


async def first_transition(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    async for event in events:
        if event.get("kind") == "transition":
            return event
    raise AssertionError("the stream ended before any transition")


@dataclass
class Viewer:
    """Bob, looking at alice's instance (shared with him) with a token or a browser session."""

    gw: RunningGateway
    admin: Api
    browser: httpx.AsyncClient
    share_id: str
    instance_id: str

    async def end_access(self, how: str, owner: Api) -> None:
        bob = next(
            u for u in (await self.admin.client.get("/api/users")).json() if u["name"] == "bob"
        )
        if how == "unshare":
            r = await owner.client.delete(
                f"/api/instances/{self.instance_id}/shares/{self.share_id}"
            )
        elif how == "sign-out":
            r = await self.browser.post("/auth/logout", headers=await self.csrf())
        elif how == "sessions-revoked":
            r = await self.admin.client.post(f"/api/users/{bob['id']}/revoke-sessions")
        else:
            assert how == "disabled"
            r = await self.admin.client.patch(f"/api/users/{bob['id']}", json={"disabled": True})
        assert r.status_code < 400, r.text

    async def csrf(self) -> dict[str, str]:
        return {"X-CSRF-Token": (await self.browser.get("/api/me")).json()["csrf_token"]}


@pytest.fixture
async def viewer(
    gateway: RunningGateway, alice: Api, admin: Api
) -> AsyncIterator[tuple[Viewer, dict[str, Any]]]:
    inst = await alice.create("tiny")
    inst = await alice.wait_state(inst["id"], "running")
    shared = await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "bob"})
    assert shared.status_code == 201, shared.text
    browser = browser_for(gateway.url, base_url=gateway.url, follow_redirects=True, timeout=30)
    signed_in = await browser.post("/auth/login", data={"username": "bob", "password": "pw-bob"})
    assert signed_in.status_code == 200
    try:
        yield Viewer(gateway, admin, browser, shared.json()["id"], inst["id"]), inst
    finally:
        await browser.aclose()


async def follow_until_closed(
    stream: httpx.Response, owner: Api, viewer: Viewer, how: str
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """With ``stream`` open: the owner pauses (the viewer sees it live), access ends, the owner
    resumes. Returns the live event seen, what the stream sent afterwards (until it ended by
    itself), and the last event id when access ended."""
    events = sse_events(stream.aiter_lines())
    async with asyncio.timeout(60):  # a guard against hanging, not a speed goal
        await owner.act(viewer.instance_id, "pause")
        live = await first_transition(events)
        await owner.wait_state(viewer.instance_id, "paused")
        await viewer.end_access(how, owner)
        ended_at = await owner.last_event_id(viewer.instance_id)
        await owner.act(viewer.instance_id, "resume")  # events the viewer must not get
        rest = [e async for e in events]
    return live, rest, ended_at


ENDINGS = ["unshare", "sign-out", "sessions-revoked", "disabled"]


@pytest.mark.parametrize("how", ENDINGS)
async def test_the_api_event_stream_ends_with_access(
    viewer: tuple[Viewer, dict[str, Any]], alice: Api, how: str
) -> None:
    bob, inst = viewer
    after = await alice.last_event_id(inst["id"])
    async with bob.browser.stream(
        "GET",
        f"/api/instances/{inst['id']}/events/stream",
        params={"after": after},
        timeout=None,
    ) as stream:
        assert stream.status_code == 200
        live, rest, ended_at = await follow_until_closed(stream, alice, bob, how)
    assert live["to"] == "stopping"
    assert [e for e in rest if e["id"] > ended_at] == []
    again = await bob.browser.get(f"/api/instances/{inst['id']}/events")
    assert again.status_code in (401, 404)
    await alice.wait_state(inst["id"], "running")


async def test_a_token_opened_stream_ends_when_the_token_is_revoked(
    viewer: tuple[Viewer, dict[str, Any]], alice: Api, gateway: RunningGateway
) -> None:
    bob, inst = viewer
    made = await bob.browser.post("/api/tokens", json={"name": "stream"}, headers=await bob.csrf())
    token = made.json()
    after = await alice.last_event_id(inst["id"])
    api = Api(gateway.url, token["token"])
    try:
        async with api.client.stream(
            "GET",
            f"/api/instances/{inst['id']}/events/stream",
            params={"after": after},
            timeout=None,
        ) as stream:
            events = sse_events(stream.aiter_lines())
            async with asyncio.timeout(60):  # a guard against hanging, not a speed goal
                await alice.act(inst["id"], "pause")
                await first_transition(events)
                revoked = await bob.browser.delete(
                    f"/api/tokens/{token['id']}", headers=await bob.csrf()
                )
                assert revoked.status_code == 204
                ended_at = await alice.last_event_id(inst["id"])
                await alice.wait_state(inst["id"], "paused")
                rest = [e async for e in events]
    finally:
        await api.aclose()
    assert [e for e in rest if e["id"] > ended_at] == []
    await alice.act(inst["id"], "resume")


@pytest.mark.parametrize("how", ["unshare", "sign-out", "disabled"])
async def test_the_instance_host_event_stream_ends_with_access(
    viewer: tuple[Viewer, dict[str, Any]], alice: Api, how: str
) -> None:
    bob, inst = viewer
    opened = await bob.browser.get(inst["url"], headers={"Accept": "text/html"})
    assert opened.status_code == 200  # handed over: the browser holds an instance cookie
    async with bob.browser.stream("GET", f"{inst['url']}_aigc/events", timeout=None) as stream:
        assert stream.status_code == 200
        live, rest, ended_at = await follow_until_closed(stream, alice, bob, how)
    assert live["to"] == "stopping"
    assert [e for e in rest if e.get("id", 0) > ended_at] == []
    again = await bob.browser.get(f"{inst['url']}_aigc/status")
    assert again.status_code == 404
    await alice.wait_state(inst["id"], "running")


# -- the engine's own address is for administrators -------------------------------------------


async def test_only_admins_see_the_engine_address(
    viewer: tuple[Viewer, dict[str, Any]], alice: Api, admin: Api
) -> None:
    bob, inst = viewer
    after = await alice.last_event_id(inst["id"])
    await alice.act(inst["id"], "restart")
    await alice.wait_state(inst["id"], "running")
    address = str((await admin.get(inst["id"]))["engine_endpoint"])  # unix:/… or host:port
    assert address.startswith("unix:/") or address.rsplit(":", 1)[1].isdigit()
    address = address.removeprefix("unix:")
    for who, internal in ((admin, True), (alice, False)):
        r = await who.client.get(f"/api/instances/{inst['id']}/events", params={"after": after})
        data = [e["data"] for e in r.json()]
        assert any("endpoint" in d for d in data) is internal
    assert (await alice.get(inst["id"]))["engine_url"] is None
    assert (await alice.get(inst["id"]))["engine_endpoint"] is None
    listed = (await alice.client.get("/api/instances")).json()
    shared_view = (await bob.browser.get(f"/api/instances/{inst['id']}")).json()
    home = (await bob.browser.get("/")).text
    mine = (await alice.client.get("/")).text
    for shown in (json.dumps(listed), json.dumps(shared_view), home, mine):
        assert address not in shown
