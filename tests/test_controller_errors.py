"""The error vocabulary drives the controller: the real controller, store, templates and engine
processes, one fake per failure mode a real part cannot produce on demand, fake time for the loops
(no test waits for a back-off or a period)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.domain.states import IllegalTransition
from aigc_gateway.errors import Conflict, PermanentError, TemporaryError
from aigc_gateway.gateway import Gateway, open_gateway
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.events import EventHub
from aigc_gateway.lifecycle.guard import Backoff, retry_delay
from aigc_gateway.lifecycle.routes import RouteTable
from aigc_gateway.lifecycle.service import CreateRequest
from aigc_gateway.metrics.prometheus import PrometheusMetrics
from aigc_gateway.runtime.base import LaunchSpec, Workload
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.settings import Settings
from aigc_gateway.store import instances as repo
from aigc_gateway.store.db import Database
from aigc_gateway.store.users import create_user
from tests.support.faketime import FakeTime
from tests.support.gateway import make_settings, stop_engines_async

JOBS = ("activity", "idle", "budget", "resync", "storage")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    found = make_settings(tmp_path, watch_templates=False)
    found.runtime_dir.mkdir(parents=True, exist_ok=True)
    return found


@pytest.fixture
async def cleanup(settings: Settings) -> AsyncIterator[list[Gateway]]:
    """Gateways a test opened: closed, and their engines stopped, at the end."""
    opened: list[Gateway] = []
    yield opened
    for gw in opened:
        await gw.close()
    await stop_engines_async(settings)


async def opened(
    settings: Settings, cleanup: list[Gateway], time: FakeTime, runtime: LocalRuntime | None = None
) -> Gateway:
    gw = await open_gateway(settings, runtime=runtime, sleep=time.sleep)
    cleanup.append(gw)
    await gw.controller.start()
    return gw


async def alice(gw: Gateway) -> Principal:
    async with gw.db.write() as session:
        user = await create_user(session, name="alice", password="pw-alice")
    return Principal(user_id=user.id, name="alice", is_admin=False)


async def settled(gw: Gateway, instance_id: str, *states: str) -> str:
    """Follow the instance's live events until it is in one of ``states``; return the state."""
    with gw.hub.subscribe(instance_id) as events:
        async with gw.db.read() as session:
            inst = await repo.get(session, instance_id)
        assert inst is not None
        state = inst.state
        async with asyncio.timeout(60):
            while state not in states:
                event = await events.get()
                state = event.target_state or state
    return state


async def transitions(gw: Gateway, instance_id: str) -> list[str]:
    async with gw.db.read() as session:
        events = await repo.events_after(session, instance_id)
    return [e.target_state for e in events if e.kind == "transition" and e.target_state]


class BusyOnce(LocalRuntime):
    """The real local runtime, except that it answers the first start with "not now"."""

    starts = 0

    async def start(self, spec: LaunchSpec) -> Workload:
        self.starts += 1
        if self.starts == 1:
            raise TemporaryError("the runtime is busy", delay=7.5)
        return await super().start(spec)


async def test_a_temporary_start_error_is_retried_after_its_delay(
    settings: Settings, cleanup: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime({"instance-": 5})
    runtime = BusyOnce(state_dir=settings.runtime_dir)
    gw = await opened(settings, cleanup, time, runtime)
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny"))
    assert await settled(gw, inst.id, "running", "failed") == "running"
    assert runtime.starts == 2
    assert time.waits[f"instance-{inst.id}-backoff"] == [7.5]  # its delay, not a back-off
    # Recorded as starting once: the retry hands the same start to the runtime.
    assert await transitions(gw, inst.id) == ["starting", "running"]
    logged = [r for r in caplog.records if "the runtime is busy" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)]


class BrokenProbe(LocalRuntime):
    """The engine starts, but its readiness cannot be checked at all: a permanent failure."""

    probes = 0

    async def wait_ready(self, instance_id: str, *, timeout: float) -> Workload:
        self.probes += 1
        raise PermanentError("the engine's health check answers 418: its model file is broken")


async def test_a_permanent_error_fails_the_instance_with_its_reason(
    settings: Settings, cleanup: list[Gateway]
) -> None:
    time = FakeTime({"instance-": 5})
    runtime = BrokenProbe(state_dir=settings.runtime_dir)
    gw = await opened(settings, cleanup, time, runtime)
    # An engine that never opens its port, so nothing but the probe can decide its readiness.
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("never-ready"))
    assert await settled(gw, inst.id, "running", "failed") == "failed"
    async with gw.db.read() as session:
        failed = await repo.get(session, inst.id)
    assert failed is not None
    assert failed.reason == "the engine's health check answers 418: its model file is broken"
    assert runtime.probes == 1  # reported, not retried
    assert time.waits[f"instance-{inst.id}-backoff"] == []


class StuckStart(LocalRuntime):
    """A start that never returns: the gateway goes down while handing the engine over."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.entered = asyncio.Event()

    async def start(self, spec: LaunchSpec) -> Workload:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_start_recorded_before_a_crash_is_made_by_the_next_gateway(
    settings: Settings, cleanup: list[Gateway]
) -> None:
    stuck = StuckStart(state_dir=settings.runtime_dir)
    first = await opened(settings, cleanup, FakeTime({}), stuck)
    inst, _ = await first.instances.create(await alice(first), CreateRequest("tiny"))
    await stuck.entered.wait()
    await first.close()  # gone between recording "starting" and the runtime's start
    cleanup.remove(first)
    async with _store(settings) as db:
        async with db.read() as session:
            found = await repo.get(session, inst.id)
        assert found is not None and found.state == "starting"

    again = await opened(settings, cleanup, FakeTime({}))  # re-adopts: the resync kicks it
    assert await settled(again, inst.id, "running", "failed") == "running"
    assert await transitions(again, inst.id) == ["starting", "running"]


class _store:
    """The store of ``settings`` opened on its own, for a look between two gateways."""

    def __init__(self, settings: Settings) -> None:
        self.db = Database(settings.sqlalchemy_url)

    async def __aenter__(self) -> Database:
        return self.db

    async def __aexit__(self, *_: object) -> None:
        await self.db.close()


class BuggyObserve(LocalRuntime):
    """Every look at an instance fails with a bug (an illegal transition stands for any)."""

    looks = 0

    async def observe(self, instance_id: str) -> Workload:
        self.looks += 1
        raise IllegalTransition("an instance cannot go from paused to running")


async def test_a_repeated_bug_is_retried_with_back_off_and_logged(
    settings: Settings, cleanup: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime({"instance-": 6})  # the 7th back-off lasts until the end of the test
    runtime = BuggyObserve(state_dir=settings.runtime_dir)
    gw = await opened(settings, cleanup, time, runtime)
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny"))
    backoff = f"instance-{inst.id}-backoff"
    await time.until(lambda: len(time.waits[backoff]) == 7)
    # One attempt per back-off, each twice as long as the one before: no hot spin.
    assert runtime.looks == 7
    assert time.waits[backoff] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    logged = [r for r in caplog.records if r.getMessage().startswith("reconcile failed")]
    assert len(logged) == 7
    assert all(r.levelno == logging.ERROR and r.exc_info for r in logged)
    assert all(isinstance(r.exc_info[1], IllegalTransition) for r in logged if r.exc_info)


def test_conflicts_are_retried_at_once_a_few_times_then_with_back_off() -> None:
    backoff = Backoff()
    clash = Conflict("instance x changed state concurrently", code="state_changed")
    delays = [retry_delay(clash, backoff, what="reconcile") for _ in range(5)]
    assert delays == [0.0, 0.0, 0.0, 0.1, 0.2]
    backoff.reset()
    assert retry_delay(clash, backoff, what="reconcile") == 0.0


class FlakyBudgets:
    """A budget source that is unavailable once, then broken (a bug) for good."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            raise TemporaryError("budgets are being recomputed", delay=4.0)
        raise RuntimeError("budget maths broke")


async def controller_with(
    settings: Settings, time: FakeTime, over_budget: Callable[[], Awaitable[list[str]]]
) -> tuple[Controller, PrometheusMetrics, Database, LocalRuntime]:
    db = Database(settings.sqlalchemy_url)
    await db.migrate()
    registry = TemplateRegistry(settings.templates_dir, db)
    await registry.reload()
    gpus = GpuBroker([], "no GPUs here")
    routes = RouteTable()  # as the gateway wires it: made first, read by the metrics
    metrics = PrometheusMetrics(routes=routes.all, gpus=gpus, templates=registry, db=db)
    runtime = LocalRuntime(state_dir=settings.runtime_dir)
    controller = Controller(
        db=db,
        runtime=runtime,
        registry=registry,
        hub=EventHub(),
        resync_interval_s=0.3,
        log_max_bytes=1 << 20,
        stop_grace_s=1,
        gpus=gpus,
        over_budget=over_budget,
        metrics=metrics,
        sleep=time.sleep,
        routes=routes,
    )
    return controller, metrics, db, runtime


async def test_one_failing_job_stops_no_other(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime({"controller-job-": 3})  # three runs of each job, then it waits for good
    budgets = FlakyBudgets()
    controller, metrics, db, runtime = await controller_with(settings, time, budgets)
    try:
        await controller.start()
        await time.until(lambda: all(len(time.waits[f"controller-job-{j}"]) == 4 for j in JOBS))
        assert controller.alive
        # The resync (crash detection) ran each period although the budget job failed each time.
        assert controller.resyncs == 1 + 3
        assert time.waits["controller-job-resync"] == [0.3] * 4
        # The budget job: its temporary error's delay, then back-off for the bug.
        assert time.waits["controller-job-budget"] == [0.3, 4.0, 0.3, 0.6]
        assert budgets.calls == 3
        exposed = (await metrics.exposition()).decode()
        assert 'aigc_duty_failures_total{duty="budget"} 3.0' in exposed
        assert 'aigc_duty_failures_total{duty="resync"}' not in exposed
        assert 'aigc_duty_last_success_timestamp_seconds{duty="resync"}' in exposed
        assert 'aigc_duty_last_success_timestamp_seconds{duty="budget"}' not in exposed
    finally:
        await controller.close()
        await runtime.close()
        await db.close()
    logged = [r for r in caplog.records if r.name == "aigc_gateway.lifecycle.guard"]
    assert [(r.levelno, bool(r.exc_info)) for r in logged] == [
        (logging.WARNING, False),  # temporary: one line, no traceback
        (logging.ERROR, True),  # a bug: its traceback
        (logging.ERROR, True),
    ]
