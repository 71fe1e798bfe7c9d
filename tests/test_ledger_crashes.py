"""No ledger second lost or counted twice when processes are killed (issue 12, items 12 and 14).

The gateway runs as a real process and is killed with SIGKILL at every step of an instance's
life; the engine is the tiny engine with ``--slow-stop``, which takes a second to stop (so a kill
lands while a stop is under way) and records when it ran by its own clock. The ledger rows must
cover exactly those runs: each row opens before its engine started and ends when the engine
ended (by the wrapper's exit file), rows do not overlap, and none is left open.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import UsageInterval
from tests.conftest import RunningGateway
from tests.support.gateway import Api, add_user, stop_engines_async, tiny_template, write_templates
from tests.support.process import gateway_process

SLOW_STOP_S = 1.0
"""How long the engine takes to stop: longer than a resync (0.3 s), so a close at the last time
the engine was seen alive (the old fallback) would end a row early by most of it."""
END_TOLERANCE_S = 0.1
"""A row's end against the engine's own last record: between them are only the engine's exit, the
wrapper's ``waitpid`` and its one ``echo`` (milliseconds, even on a loaded machine); the file's
time comes from the kernel's coarse clock, up to one tick (at most 10 ms) behind."""
COARSE_S = 0.01
START_SLACK_S = 10.0
"""A row opens with the starting transition, before the fork; the engine's own first record
comes after its interpreter started (seconds on a loaded test machine). The bound only catches a
row opened at a wrong moment (an earlier run's, or at a restart of the gateway)."""


@dataclass(frozen=True)
class Run:
    start: float
    end: float


async def next_event(
    api: Api, instance_id: str, after: int, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first event after ``after`` that passes ``check``, from the live event stream."""
    async with asyncio.timeout(60):
        async with api.client.stream(
            "GET",
            f"/api/instances/{instance_id}/events/stream",
            params={"after": after},
            timeout=None,
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:") and check(event := json.loads(line[5:])):
                    return dict(event)
    raise AssertionError("event stream ended")


def spawned(event: dict[str, Any]) -> bool:
    """The engine process exists (the start's "waiting for the engine" step)."""
    return event["kind"] == "progress" and "pid" in event["data"]


def entered(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["kind"] == "transition" and event["to"] == state


Step = Callable[[Api, str], Awaitable[None]]


def act_then(action: str, moment: Callable[[dict[str, Any]], bool]) -> Step:
    async def step(api: Api, instance_id: str) -> None:
        await api.settled(instance_id)
        after = await api.last_event_id(instance_id)
        await api.act(instance_id, action)
        await next_event(api, instance_id, after, moment)

    return step


async def until_running(api: Api, instance_id: str) -> None:
    await api.wait_state(instance_id, "running")


async def relaunched(api: Api, instance_id: str) -> None:
    """The restarted gateway finishes the restart's stop and launches the engine again."""
    events = (await api.client.get(f"/api/instances/{instance_id}/events")).json()
    stopping = [e["id"] for e in events if entered("stopping")(e)][-1]
    await next_event(api, instance_id, stopping, spawned)


async def delete_then_stopping(api: Api, instance_id: str) -> None:
    after = await api.last_event_id(instance_id)
    r = await api.client.delete(f"/api/instances/{instance_id}")
    assert r.status_code in (200, 202, 204), r.text
    await next_event(api, instance_id, after, entered("stopping"))


STEPS: list[tuple[str, Step]] = [
    ("ready", until_running),
    ("pause (stopping)", act_then("pause", entered("stopping"))),
    ("resume (engine spawned)", act_then("resume", spawned)),
    ("restart (stopping)", act_then("restart", entered("stopping"))),
    ("restart (engine spawned again)", relaunched),
    ("delete (stopping)", delete_then_stopping),
]
"""What to do, and the moment to kill the gateway, after each restart. The first kill (after the
create, once the engine is spawned) is in the test itself."""


@pytest.mark.timeout(600)  # eight gateway starts, each some seconds on a loaded machine
async def test_kill_9_of_the_gateway_at_every_step_loses_no_ledger_second(
    tmp_path: Path, listener: socket.socket
) -> None:
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    (templates / "slow.yaml").write_text(
        tiny_template("slow", "--slow-stop", str(SLOW_STOP_S), grace=5)
    )
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice")
    try:
        instance_id = await _kill_at_every_step(data, templates, listener, token)
        rows = await _ledger(settings, instance_id)
    finally:
        await stop_engines_async(settings)
    _check_rows_cover_runs(rows, _engine_runs(data))


async def _kill_at_every_step(
    data: Path, templates: Path, listener: socket.socket, token: str
) -> str:
    port = listener.getsockname()[1]
    with gateway_process(data, templates, listener) as gw:  # kill 1: the start, engine spawned
        api = Api(f"http://127.0.0.1:{port}", token)
        created = await api.create("slow")
        instance_id = str(created["id"])
        await next_event(api, instance_id, 0, spawned)
        await api.aclose()
        gw.kill()
        gw.wait(10)
    for _, step in STEPS:
        with gateway_process(data, templates, listener) as gw:
            api = Api(f"http://127.0.0.1:{port}", token)
            await step(api, instance_id)
            await api.aclose()
            gw.kill()
            gw.wait(10)
    with gateway_process(data, templates, listener):
        api = Api(f"http://127.0.0.1:{port}", token)
        try:
            assert (await api.wait_state(instance_id, "deleted"))["state"] == "deleted"
        finally:
            await api.aclose()
    return instance_id


async def _ledger(settings: Settings, instance_id: str) -> list[UsageInterval]:
    db = Database(settings.sqlalchemy_url)
    try:
        async with db.read() as session:
            return list(
                await session.scalars(
                    select(UsageInterval)
                    .where(UsageInterval.instance_id == instance_id)
                    .order_by(UsageInterval.id)
                )
            )
    finally:
        await db.close()


def _engine_runs(data: Path) -> list[Run]:
    """Each engine run, by the engine's own records (one volume: the slow family's)."""
    (life,) = data.glob("volumes/*/slow/life.jsonl")
    starts: dict[int, float] = {}
    runs = []
    for line in life.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "start":
            starts[record["pid"]] = record["t"]
        else:
            runs.append(Run(starts.pop(record["pid"]), record["t"]))
    assert not starts, "an engine run has no end: it is still running, or was SIGKILLed"
    return sorted(runs, key=lambda r: r.start)


def _merged(rows: list[UsageInterval]) -> list[tuple[datetime, datetime]]:
    """Rows as spans, with the cuts at UTC midnight joined again."""
    spans: list[tuple[datetime, datetime]] = []
    for row in rows:
        assert row.end_at is not None, "a ledger row was left open"
        start, end = row.start_at.replace(tzinfo=UTC), row.end_at.replace(tzinfo=UTC)
        if spans and spans[-1][1] == start and row.closed_by != "stop":
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _check_rows_cover_runs(rows: list[UsageInterval], runs: list[Run]) -> None:
    spans = _merged(rows)
    assert len(runs) == 3  # the first start, the resume, the restart
    assert len(spans) == len(runs), (spans, runs)
    previous_end = 0.0
    for (start_at, end_at), run in zip(spans, runs, strict=True):
        start, end = start_at.timestamp(), end_at.timestamp()
        assert previous_end <= start <= run.start < start + START_SLACK_S  # no overlap
        assert run.end - COARSE_S <= end <= run.end + END_TOLERANCE_S, (end - run.end, run)
        previous_end = end
    for row in rows:  # and each row's milliseconds are its span
        assert row.end_at is not None
        assert row.duration_ms == round((row.end_at - row.start_at) / timedelta(milliseconds=1))


async def test_kill_9_of_the_engine_wrapper_fails_the_instance_with_the_reason(
    gateway: RunningGateway, alice: Api
) -> None:
    """The wrapper that records the engine's exit is killed on its own: the instance must not stay
    "running" with nothing left to notice the engine's end. It fails with the reason, the
    orphaned engine is stopped, and the ledger row ends when the engine did."""
    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    wrapper = psutil.Process([e["data"]["pid"] for e in events if "pid" in e["data"]][-1])
    (engine,) = wrapper.children()
    killed = datetime.now(UTC)
    wrapper.kill()
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert "engine supervisor killed" in failed["reason"]
    assert not _alive(engine)
    (row,) = (await alice.client.get(f"/api/instances/{inst['id']}/usage")).json()
    assert row["closed_by"] == "stop"
    assert killed <= datetime.fromisoformat(row["end_at"]) <= datetime.now(UTC)
    # Nothing holds it any more: it starts again on request.
    await alice.act(inst["id"], "restart")
    assert (await alice.wait_state(inst["id"], "running", "failed"))["state"] == "running"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
