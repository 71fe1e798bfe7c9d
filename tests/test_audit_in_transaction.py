"""Audit entries are written by the services, in the action's own transaction: an action and
its entry exist together or not at all. On the old main the routers wrote the entry after the
service had committed, in a transaction of their own, so a failure there (or a crash between
the two) left a change nobody had recorded."""

from __future__ import annotations

from typing import Any

import pytest

from aigc_gateway.store import access
from tests.conftest import RunningGateway
from tests.support.gateway import Api


class AuditDown(RuntimeError):
    """The audit write fails (one fake for a failure the real store gives only by chance)."""


@pytest.fixture
def failing_audit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every audit write for an instance pause or a share fail; the actions attempted."""
    attempted: list[str] = []
    real = access.audit

    async def audit(session: Any, **entry: Any) -> None:
        if entry["action"] in ("instance.pause", "share.create"):
            attempted.append(entry["action"])
            raise AuditDown(entry["action"])
        await real(session, **entry)

    monkeypatch.setattr(access, "audit", audit)
    return attempted


async def test_an_action_whose_audit_fails_is_not_applied(
    gateway: RunningGateway, alice: Api, admin: Api, failing_audit: list[str]
) -> None:
    inst = await alice.create("tiny")
    await alice.wait_state(inst["id"], "running")
    paused = await alice.client.post(f"/api/instances/{inst['id']}/pause")
    assert paused.status_code == 500
    assert failing_audit == ["instance.pause"]
    after = await alice.get(inst["id"])
    assert after["desired_state"] == "running" and after["state"] == "running"
    shared = await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "bob"})
    assert shared.status_code == 500
    assert (await alice.client.get(f"/api/instances/{inst['id']}/shares")).json() == []
    # Nothing of either reached the log; the create did, with the client's address.
    log = (await admin.client.get("/api/audit", params={"action": "instance."})).json()
    assert [(e["action"], e["target_id"]) for e in log] == [("instance.create", inst["id"])]
    assert log[0]["ip"] == "127.0.0.1"


async def test_each_action_is_audited_once_with_its_change(
    gateway: RunningGateway, alice: Api, admin: Api
) -> None:
    inst = await alice.create("tiny")
    await alice.wait_state(inst["id"], "running")
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    await alice.act(inst["id"], "pause")  # a repeat changes nothing, and is still recorded
    share = await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "bob"})
    assert share.status_code == 201
    await alice.client.delete(f"/api/instances/{inst['id']}/shares/{share.json()['id']}")
    log = (await admin.client.get("/api/audit", params={"limit": 50})).json()
    mine = [e["action"] for e in reversed(log) if e["target_id"] == inst["id"]]
    assert mine == [
        "instance.create", "instance.pause", "instance.pause", "share.create", "share.revoke",
    ]  # fmt: skip
    assert all(e["actor"] == "alice" for e in log if e["target_id"] == inst["id"])
