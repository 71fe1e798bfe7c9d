"""The core flow with real engine processes: install → running → answers → pause → resume → data
kept → delete."""

from __future__ import annotations

import socket

import psutil
import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api, engine_client, engine_endpoint


def endpoint_is_closed(endpoint: str) -> bool:
    """Nothing answers at an engine's endpoint (``unix:/path`` or ``host:port``) any more."""
    if endpoint.startswith("unix:"):
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(endpoint.removeprefix("unix:")) != 0
    host, port = endpoint.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


async def test_tiny_engine_full_lifecycle(alice: Api, admin: Api, gateway: RunningGateway) -> None:
    inst = await alice.create("tiny", name="mine")
    assert inst["state"] in ("pending", "starting")
    inst = await alice.wait_state(inst["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    engine = await engine_endpoint(admin, inst["id"])
    async with await engine_client(admin, inst["id"]) as direct:
        assert (await direct.get("/")).text == "ok"
        await direct.get("/write", params={"name": "out.txt", "content": "made before pause"})
    pid = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    spawned = [e for e in pid if e["kind"] == "progress" and "pid" in e["data"]]
    engine_pid = spawned[-1]["data"]["pid"]
    assert psutil.pid_exists(engine_pid)

    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    assert (await admin.get(inst["id"]))["engine_endpoint"] is None
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == "zombie"
    assert endpoint_is_closed(engine)

    await alice.act(inst["id"], "resume")
    resumed = await alice.wait_state(inst["id"], "running", "failed")
    assert resumed["state"] == "running", resumed["reason"]
    async with await engine_client(admin, inst["id"]) as direct:
        assert (await direct.get("/read", params={"name": "out.txt"})).text == "made before pause"

    r = await alice.client.delete(f"/api/instances/{inst['id']}")
    assert r.status_code == 202
    await alice.wait_state(inst["id"], "deleted")
    assert (await alice.client.get(f"/api/instances/{inst['id']}")).status_code == 404
    volume = gateway.settings.volumes_dir
    kept = list(volume.glob("*/tiny/out.txt"))
    assert len(kept) == 1
    assert kept[0].read_text() == "made before pause"

    # A new instance of the same family sees the kept data.
    again = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    async with await engine_client(admin, again["id"]) as direct:
        assert (await direct.get("/read", params={"name": "out.txt"})).text == "made before pause"
    r = await alice.client.delete(f"/api/instances/{again['id']}", params={"delete_data": "true"})
    await alice.wait_state(again["id"], "deleted")
    assert not kept[0].exists()


async def test_actions_are_idempotent(alice: Api) -> None:
    inst = await alice.create("tiny", request_id="click-1")
    twice = await alice.create("tiny", request_id="click-1")
    assert twice["id"] == inst["id"]
    listed = (await alice.client.get("/api/instances")).json()
    assert [i["id"] for i in listed] == [inst["id"]]
    await alice.wait_state(inst["id"], "running")
    await alice.act(inst["id"], "resume")  # already running: nothing happens
    await alice.act(inst["id"], "pause")
    await alice.act(inst["id"], "pause")  # a retried pause is not an error
    await alice.wait_state(inst["id"], "paused")
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    starts = [e for e in events if e["kind"] == "transition" and e["to"] == "starting"]
    assert len(starts) == 1


async def test_restart_launches_a_new_process(alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    first_started = inst["started_at"]
    await alice.act(inst["id"], "restart")
    await alice.act(inst["id"], "restart")  # a double click restarts once
    again = await alice.wait_state(inst["id"], "running", "failed")
    # wait_state may return on the first running transition; settle on the final one.
    again = await alice.settled(inst["id"])
    assert again["state"] == "running"
    assert again["started_at"] != first_started
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    assert len([e for e in events if e["kind"] == "transition" and e["to"] == "starting"]) == 2


async def test_an_action_answers_the_state_after_it(alice: Api) -> None:
    """A restart's answer is not the old snapshot (running, the old engine address): a client
    polling for running would be fooled. It shows the controller's first step."""
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    assert inst["actions"] == ["open", "pause", "restart", "delete"]
    restarted = await alice.act(inst["id"], "restart")
    assert restarted["state"] == "stopping" and restarted["desired_state"] == "running"
    assert restarted["engine_endpoint"] is None
    assert restarted["actions"] == ["open", "pause", "delete"]
    again = await alice.settled(inst["id"])
    assert again["state"] == "running" and again["started_at"] != inst["started_at"]
    paused = await alice.act(inst["id"], "pause")
    assert paused["state"] == "stopping" and paused["desired_state"] == "paused"
    await alice.wait_state(inst["id"], "paused")
    resumed = await alice.act(inst["id"], "resume")
    assert resumed["state"] == "starting"


async def test_actions_the_state_does_not_allow_are_refused(alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    await alice.act(inst["id"], "pause")
    paused = await alice.wait_state(inst["id"], "paused")
    assert paused["actions"] == ["resume", "delete"]
    r = await alice.client.post(f"/api/instances/{inst['id']}/restart")
    assert r.status_code == 409
    assert r.json()["code"] == "action_not_allowed"
    assert r.json()["message"] == "cannot restart: this instance is paused; resume it instead"
    await alice.act(inst["id"], "pause")  # a repeated pause is still a no-op, not a refusal
    assert (await alice.get(inst["id"]))["state"] == "paused"
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    assert [e["message"] for e in events if e["kind"] == "action"] == ["created", "pause"]


async def test_logs_tail_counts_lines(alice: Api) -> None:
    inst = await alice.wait_state((await alice.create("crash"))["id"], "failed")
    logs = f"/api/instances/{inst['id']}/logs"
    last = (await alice.client.get(logs, params={"tail": 1})).text
    assert last == "tiny engine: cannot load model weights, giving up\n"
    two = (await alice.client.get(logs, params={"tail": 2})).text
    assert two.startswith("tiny engine starting, pid ") and two.endswith(last)
    assert two.count("\n") == 2
    refused = await alice.client.get(logs, params={"tail": 0})
    assert refused.status_code == 422 and "tail" in refused.text


@pytest.mark.parametrize("template", ["demo"])
async def test_demo_engine_generates_into_user_data(alice: Api, admin: Api, template: str) -> None:
    inst = await alice.wait_state((await alice.create(template))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    async with await engine_client(admin, inst["id"], timeout=30) as engine:
        job = (await engine.post("/api/generate", json={"prompt": "a red fox", "seed": 1})).json()
        async with engine.stream("GET", f"/api/jobs/{job['job']}/events") as events:
            kinds = [
                line
                for line in [ln async for ln in events.aiter_lines()]
                if line.startswith("event:")
            ]
        assert kinds[-1].strip() == "event: done"
        outputs = (await engine.get("/api/outputs")).json()
    assert len(outputs) == 1
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    await alice.act(inst["id"], "resume")
    inst = await alice.wait_state(inst["id"], "running")
    async with await engine_client(admin, inst["id"]) as engine:
        assert [o["name"] for o in (await engine.get("/api/outputs")).json()] == [
            o["name"] for o in outputs
        ]
