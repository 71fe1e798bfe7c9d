"""The controller against runtimes that fail the ways the real one cannot on demand
(tests/support/fake_runtimes.py): a start that hangs, an engine that exits during the start, a
stop that fails. Real controller, store, templates and engine processes; fake time for the
controller's waits (no test waits out a time-out or a back-off)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from aigc_gateway.gateway import Gateway
from aigc_gateway.lifecycle.events import EventRecord
from aigc_gateway.lifecycle.service import Action, CreateRequest
from aigc_gateway.settings import Settings
from aigc_gateway.store import instances as repo
from tests.support.fake_runtimes import ExitsDuringStart, FailingStop, HangingStart
from tests.support.faketime import FakeTime
from tests.support.gateway import make_settings
from tests.test_controller_errors import alice, cleanup, opened, settled, transitions

__all__ = ["cleanup"]  # the fixture, shared with test_controller_errors (its gateways closed)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    found = make_settings(tmp_path, watch_templates=False, launch_timeout_s=90)
    found.runtime_dir.mkdir(parents=True, exist_ok=True)
    return found


async def reason(gw: Gateway, instance_id: str) -> str:
    async with gw.db.read() as session:
        inst = await repo.get(session, instance_id)
    assert inst is not None
    return inst.reason


async def event_of(gw: Gateway, instance_id: str, kind: str) -> EventRecord:
    """The instance's first event of ``kind``, waiting for it on the live stream."""
    with gw.hub.subscribe(instance_id) as live:
        async with gw.db.read() as session:
            stored = [EventRecord.of(e) for e in await repo.events_after(session, instance_id)]
        async with asyncio.timeout(30):
            while not (found := [e for e in stored if e.kind == kind]):
                stored.append(await live.get())
    return found[0]


async def test_a_start_that_hangs_fails_the_instance_after_the_launch_timeout(
    settings: Settings, cleanup: list[Gateway]
) -> None:
    time = FakeTime({"instance-": 5, "launch-timeout-": 1})  # the time-out passes at once
    runtime = HangingStart(state_dir=settings.runtime_dir)
    gw = await opened(settings, cleanup, time, runtime)
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny"))
    assert await settled(gw, inst.id, "running", "failed") == "failed"
    assert time.waits[f"launch-timeout-{inst.id}"] == [90]
    assert runtime.cancelled == 1 and runtime.stops == [inst.id]  # what it began is stopped
    why = await reason(gw, inst.id)
    assert "the local runtime did not launch the engine within 90 s" in why
    assert "Start the instance again" in why
    assert await transitions(gw, inst.id) == ["starting", "failed"]
    assert gw.gpus.inventory.allocation(inst.id) is None


async def test_an_engine_that_exits_during_the_start_fails_with_its_code_and_output(
    settings: Settings, cleanup: list[Gateway]
) -> None:
    time = FakeTime({"instance-": 5})
    gw = await opened(settings, cleanup, time, ExitsDuringStart(state_dir=settings.runtime_dir))
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("crash"))
    assert await settled(gw, inst.id, "running", "failed") == "failed"
    exit_event = await event_of(gw, inst.id, "exit")  # recorded right after the move
    async with gw.db.read() as session:
        failed = await repo.get(session, inst.id)
    assert failed is not None and failed.exit_code == 3
    assert "code 3" in failed.reason
    assert exit_event.data["exit_code"] == 3
    assert "cannot load model weights" in exit_event.data["log_tail"]
    assert await transitions(gw, inst.id) == ["starting", "failed"]
    assert time.waits[f"instance-{inst.id}-backoff"] == []  # reported, not retried


async def test_a_stop_that_fails_keeps_the_instance_stopping_and_retries_with_back_off(
    settings: Settings, cleanup: list[Gateway]
) -> None:
    time = FakeTime({"instance-": 10})
    runtime = FailingStop(state_dir=settings.runtime_dir, failures=3)
    gw = await opened(settings, cleanup, time, runtime)
    who = await alice(gw)
    inst, _ = await gw.instances.create(who, CreateRequest("tiny"))
    assert await settled(gw, inst.id, "running", "failed") == "running"
    pid = (await runtime.observe(inst.id)).pid
    assert pid is not None
    await gw.instances.act(who, inst.id, Action.PAUSE)
    assert await settled(gw, inst.id, "paused", "failed") == "paused"
    # Three failed stops, each reported and retried later than the one before; never failed
    # or paused while the engine might still run.
    assert runtime.attempts == 5  # 3 failed, 1 that stopped it, 1 (idempotent) on pausing
    assert time.waits[f"instance-{inst.id}-backoff"] == [1.0, 2.0, 4.0]
    assert await transitions(gw, inst.id) == ["starting", "running", "stopping", "paused"]
    async with gw.db.read() as session:
        events = await repo.events_after(session, inst.id)
    errors = [e.message for e in events if e.kind == "error"]
    assert len(errors) == 3
    assert errors[0].startswith(
        "the runtime could not stop the engine: cannot signal the engine's processes"
    )
    assert "it may still be running" in errors[0] and "retrying in 1 s" in errors[0]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
