"""Concurrent requests: limits hold exactly and actions end in a consistent state."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.gateway import Api, make_settings


@pytest.fixture
def gateway_settings(tmp_path: Path, database_url: str) -> Settings:
    """These tests run on both stores: SQLite and a real PostgreSQL server."""
    return make_settings(tmp_path, database_url=database_url)


async def test_twenty_simultaneous_creates_make_exactly_the_allowed_number(
    alice: Api, gateway: RunningGateway
) -> None:
    limit = gateway.settings.max_instances_per_user
    results = await asyncio.gather(
        *(alice.client.post("/api/instances", json={"template": "tiny"}) for _ in range(20))
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == limit
    assert codes.count(409) == 20 - limit
    refused = next(r for r in results if r.status_code == 409).json()
    assert refused["code"] == "instance_limit_reached"
    listed = (await alice.client.get("/api/instances")).json()
    assert len(listed) == limit
    assert len({i["name"] for i in listed}) == limit
    for inst in listed:
        assert (await alice.wait_state(inst["id"], "running"))["state"] == "running"


async def test_retried_creates_with_one_request_id_make_one_instance(alice: Api) -> None:
    results = await asyncio.gather(
        *(
            alice.client.post("/api/instances", json={"template": "tiny", "request_id": "r-1"})
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in results) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in results}) == 1


async def test_concurrent_pause_and_resume_end_consistent(alice: Api, admin: Api) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    actions = ["pause", "resume"] * 10 + ["pause"]
    results = await asyncio.gather(
        *(alice.client.post(f"/api/instances/{inst['id']}/{a}") for a in actions)
    )
    assert all(r.status_code == 202 for r in results)
    # Whatever order the requests landed in, the instance settles in the desired state of the
    # last one applied.
    desired = (await alice.get(inst["id"]))["desired_state"]
    settled = await alice.settled(inst["id"])
    assert settled["state"] == desired
    assert ((await admin.get(inst["id"]))["engine_endpoint"] is not None) == (desired == "running")
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    transitions = [(e["from"], e["to"]) for e in events if e["kind"] == "transition"]
    for (_, to), (frm, _) in itertools.pairwise(transitions):
        assert to == frm, transitions  # every transition starts where the last one ended
    # Pausing now converges to paused, with the engine gone.
    await alice.act(inst["id"], "pause")
    paused = await alice.settled(inst["id"])
    assert paused["state"] == "paused"
    assert (await admin.get(inst["id"]))["engine_endpoint"] is None
