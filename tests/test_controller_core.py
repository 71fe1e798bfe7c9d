"""The controller's core on its own: a failure that repeats never makes an actor spin, one failing
duty stops no other, and a state move records exactly what it says.

The real controller, store and templates; a runtime that fails one way on purpose (no engine
process is ever started here); fake time for every loop (tests/support/faketime.py), so "a long
stretch" of back-off passes in no time and no test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.domain.states import InstanceState, Transition
from aigc_gateway.errors import Conflict, PermanentError
from aigc_gateway.gateway import Gateway, open_gateway
from aigc_gateway.gpu import Placement
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.duties import Poke
from aigc_gateway.lifecycle.events import EventHub
from aigc_gateway.lifecycle.guard import Backoff, Duties
from aigc_gateway.lifecycle.moves import Launch, Move, Progress
from aigc_gateway.lifecycle.service import CreateRequest
from aigc_gateway.metrics import Metrics
from aigc_gateway.metrics.prometheus import PrometheusMetrics
from aigc_gateway.runtime.base import LaunchSpec, Workload
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.settings import Settings
from aigc_gateway.store import instances as repo
from aigc_gateway.store.db import Database
from aigc_gateway.store.instances import InstanceChanges
from aigc_gateway.store.tables import Event, Instance
from aigc_gateway.store.usage import Holding
from aigc_gateway.store.users import create_user
from tests.support.faketime import FakeTime
from tests.support.gateway import make_settings

S = InstanceState
FAKE_TIME_DUTIES = ("activity", "idle", "budget", "resync", "storage", "quota")
"""The controller's duties that wait on its (fake) sleep; lease renewal waits on real time."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    found = make_settings(tmp_path, watch_templates=False, reconcile_interval_s=5.0)
    found.runtime_dir.mkdir(parents=True, exist_ok=True)
    return found


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    opened: list[Gateway] = []
    yield opened
    for gw in opened:
        await gw.close()


async def started(
    settings: Settings, gateways: list[Gateway], time: FakeTime, runtime: LocalRuntime
) -> Gateway:
    gw = await open_gateway(settings, runtime=runtime, sleep=time.sleep)
    gateways.append(gw)
    await gw.controller.start()
    return gw


async def alice(gw: Gateway) -> Principal:
    async with gw.db.write() as session:
        user = await create_user(session, name="alice", password="pw-alice")
    return Principal(user_id=user.id, name="alice", is_admin=False)


async def stored(gw: Gateway, instance_id: str) -> Instance:
    async with gw.db.read() as session:
        inst = await repo.get(session, instance_id)
    assert inst is not None
    return inst


async def transitions(gw: Gateway, instance_id: str) -> list[str]:
    async with gw.db.read() as session:
        events = await repo.events_after(session, instance_id)
    return [e.target_state for e in events if e.kind == "transition" and e.target_state]


async def turns(n: int = 50) -> None:
    """Let every ready task run ``n`` times: what a hot loop would use to spin."""
    for _ in range(n):
        await asyncio.sleep(0)


class NoImage(LocalRuntime):
    """A runtime whose start always fails the same way: the engine's image is not there. Says
    when the controller looked at an instance (``looks``, ``looked``)."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.starts = 0
        self.looks = 0
        self.looked = asyncio.Event()

    async def start(self, spec: LaunchSpec) -> Workload:
        self.starts += 1
        raise PermanentError("the engine image demo:missing does not exist on this host")

    async def observe(self, instance_id: str) -> Workload:
        self.looks += 1
        self.looked.set()
        return await super().observe(instance_id)

    async def looked_at_least(self, looks: int) -> None:
        async with asyncio.timeout(30):
            while self.looks < looks:
                self.looked.clear()
                await self.looked.wait()


async def settled(gw: Gateway, instance_id: str, *states: str) -> str:
    """Follow the instance's live events until it is in one of ``states``; return the state."""
    with gw.hub.subscribe(instance_id) as events:
        state = (await stored(gw, instance_id)).state
        async with asyncio.timeout(30):
            while state not in states:
                state = (await events.get()).target_state or state
    return state


async def resync_once(time: FakeTime, passes: int) -> None:
    """Let the held resync duty take one step (its ``passes``-th), and wait till it is held again."""
    time.release("controller-job-resync")
    await time.until(lambda: len(time.waits["controller-job-resync"]) == passes + 1)


async def test_a_start_that_always_fails_fails_the_instance_once_and_is_not_retried(
    settings: Settings, gateways: list[Gateway]
) -> None:
    time = FakeTime({"instance-": 100})  # the periodic duties are held: released one by one
    runtime = NoImage(state_dir=settings.runtime_dir)
    gw = await started(settings, gateways, time, runtime)
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny"))
    assert await settled(gw, inst.id, "failed", "running") == "failed"
    # Twenty resync periods pass; each kicks the instance, and each kick looks at it again.
    for passes in range(1, 21):
        looks = runtime.looks
        await resync_once(time, passes)
        await runtime.looked_at_least(looks + 1)
    assert gw.controller.resyncs == 1 + 20
    # One attempt, a clear error state, and no retry however often it is looked at again.
    assert runtime.starts == 1
    failed = await stored(gw, inst.id)
    assert failed.state == "failed"
    assert failed.reason == "the engine image demo:missing does not exist on this host"
    assert await transitions(gw, inst.id) == ["starting", "failed"]
    assert time.waits[f"instance-{inst.id}-backoff"] == []  # not even a back-off: it gave up


async def test_a_conflict_that_recurs_is_retried_with_back_off_not_in_a_hot_loop(
    settings: Settings, gateways: list[Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0

    async def always_conflicts(
        session: object, inst: Instance, move: Transition, **changes: object
    ) -> Event:
        nonlocal attempts
        attempts += 1
        raise Conflict(f"instance {inst.id} changed state concurrently", code="state_changed")

    # Another writer always moves the instance first (here: every state move is refused).
    monkeypatch.setattr(repo, "apply_transition", always_conflicts)
    time = FakeTime({"instance-": 12})  # twelve back-offs pass; the 13th is held
    runtime = NoImage(state_dir=settings.runtime_dir)
    gw = await started(settings, gateways, time, runtime)
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny"))
    backoff = f"instance-{inst.id}-backoff"
    await time.until(lambda: len(time.waits[backoff]) == 13)
    seen = attempts
    await turns()
    assert attempts == seen  # held in its back-off: no attempt while it waits
    # Three looks at once (a race resolves itself), then one attempt per doubling back-off, up to
    # 30 s each: 16 attempts in over two minutes of fake time, where a hot loop makes thousands.
    assert attempts == 3 + 13
    assert time.waits[backoff] == [0.1 * 2**k for k in range(9)] + [30.0] * 4
    assert sum(time.waits[backoff][:12]) > 120
    assert runtime.starts == 0  # never recorded as starting, so never handed to the runtime
    assert (await stored(gw, inst.id)).state == "pending"
    assert gw.controller.alive


class Steps(Metrics):
    """Records what the duties report."""

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self.successes: dict[str, int] = {}

    def job_step(self, job: str, seconds: float) -> None:
        self.steps.setdefault(job, []).append(seconds)

    def job_failed(self, job: str) -> None:
        self.failures[job] = self.failures.get(job, 0) + 1

    def job_succeeded(self, job: str, at: float) -> None:
        self.successes[job] = self.successes.get(job, 0) + 1


@contextlib.asynccontextmanager
async def controller_with(
    settings: Settings, time: FakeTime, over_budget: Callable[[], Awaitable[list[str]]]
) -> AsyncIterator[tuple[Controller, PrometheusMetrics]]:
    """A controller on its own (no service, no proxy) whose budget duty asks ``over_budget``."""
    db = Database(settings.sqlalchemy_url)
    await db.migrate()
    registry = TemplateRegistry(settings.templates_dir, db)
    await registry.reload()
    gpus = GpuBroker([], "no GPUs here")
    controller: Controller
    metrics = PrometheusMetrics(
        routes=lambda: controller.routes.all(), gpus=gpus, templates=registry, db=db
    )
    runtime = LocalRuntime(state_dir=settings.runtime_dir)
    controller = Controller(
        db=db,
        runtime=runtime,
        registry=registry,
        hub=EventHub(),
        resync_interval_s=5.0,
        log_max_bytes=1 << 20,
        stop_grace_s=1,
        gpus=gpus,
        over_budget=over_budget,
        metrics=metrics,
        sleep=time.sleep,
    )
    try:
        yield controller, metrics
    finally:
        await controller.close()
        await runtime.close()
        await db.close()


async def budgets_broken() -> list[str]:
    raise RuntimeError("the budget maths broke")


async def test_a_duty_that_always_fails_stops_no_other_and_is_retried_with_back_off(
    settings: Settings,
) -> None:
    time = FakeTime({"controller-job-": 6})  # six waits of each duty return; the 7th is held
    async with controller_with(settings, time, budgets_broken) as (controller, metrics):
        await controller.start()
        await time.until(
            lambda: all(len(time.waits[f"controller-job-{d}"]) == 7 for d in FAKE_TIME_DUTIES)
        )
        sample = metrics.registry.get_sample_value
        # Each duty took a step after each of its six waits; only the budget's failed.
        for duty in FAKE_TIME_DUTIES:
            job = {"duty": duty}
            assert sample("aigc_duty_steps_total", job) == 6, duty
            assert sample("aigc_duty_duration_seconds_count", job) == 6, duty
            failures = sample("aigc_duty_failures_total", job)
            assert failures == (6 if duty == "budget" else None), duty
            succeeded = sample("aigc_duty_last_success_timestamp_seconds", job)
            assert (succeeded is None) == (duty == "budget"), duty
        assert controller.resyncs == 1 + 6  # crash detection went on
        # The others wait a period; the failing one retries with doubling back-off.
        assert time.waits["controller-job-resync"] == [5.0] * 7
        assert time.waits["controller-job-budget"] == [5.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
        assert controller.alive


async def test_a_failed_trigger_is_counted_and_the_step_is_caught_up() -> None:
    """A duty whose trigger fails (a folder watch that broke) backs off, then takes its step
    without waiting for the trigger: what the failure may have missed is done at once."""
    time = FakeTime({"watching": 3})
    metrics = Steps()
    poke = Poke()
    triggers = 0

    async def breaks_twice() -> None:
        nonlocal triggers
        triggers += 1
        if triggers <= 2:
            raise OSError("the watched folder is gone")
        await poke()

    reloads = 0

    async def reload() -> None:
        nonlocal reloads
        reloads += 1

    duties = Duties(metrics=metrics, sleep=time.sleep)
    duties.start("watching", reload, trigger=breaks_twice, backoff=Backoff(first=1.0, most=60.0))
    try:
        await time.until(lambda: len(time.waits["watching"]) == 2)
        await turns()
        # Each failure backs off, then steps; the step's success resets the back-off.
        assert time.waits["watching"] == [1.0, 1.0]
        assert metrics.failures == {"watching": 2} and len(metrics.steps["watching"]) == 2
        assert metrics.successes == {"watching": 2}
        assert reloads == 2 and triggers == 3  # waiting for the third trigger now
        poke.set()
        await turns()
        assert reloads == 3 and metrics.successes == {"watching": 3}
        assert duties.alive
    finally:
        await duties.close()
    assert not duties.alive


# -- typed moves ---------------------------------------------------------------------------------


def instance(**columns: object) -> Instance:
    inst = Instance(id="i1", state="pending", generation=3, queued_at=None)
    for key, value in columns.items():
        setattr(inst, key, value)
    return inst


def test_a_move_to_starting_records_its_launch_and_clears_the_last_engine() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    launch = Launch(
        generation=3,
        template_revision_id=7,
        template_version="1.2",
        at=at,
        placement=Placement("i1", ("GPU-0",), 8.0, "GPU-0 has room"),
        holdings=[Holding("gpu_share", share_gib=8.0)],
    )
    move = Move(S.STARTING, "starting", progress=(Progress(1), Progress(2)), launch=launch)
    expected: InstanceChanges = {
        "launched_generation": 3,
        "template_revision_id": 7,
        "started_at": at,
        "ready_at": None,
        "exit_code": None,
        "pid": None,
        "gpu_ids": ["GPU-0"],
        "gpu_memory_gib": 8.0,
        "gpu_since": at,
        "placement": "GPU-0 has room",
        "queued_at": None,  # it waited in the queue: no longer
    }
    assert move.changes(instance(queued_at=at), frees_gpus=False) == expected
    assert [p.event_data() for p in move.progress] == [
        {"step": 2, "steps": 5},
        {"step": 3, "steps": 5},
    ]
    assert not move.closes_ledger(S.QUEUED)


def test_a_move_sets_only_what_it_names() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    running = Move(S.RUNNING, "engine is ready", ready_at=at, pid=41, endpoint="127.0.0.1:9000")
    assert running.changes(instance(), frees_gpus=False) == {
        "ready_at": at,
        "pid": 41,
        "endpoint": "127.0.0.1:9000",
    }
    # An ended engine's process is left on record; its GPUs go, and so does the ledger.
    failed = Move(S.FAILED, "engine exited with code 3", ended_at=at, exit_code=3)
    assert failed.changes(instance(), frees_gpus=True) == {
        "exit_code": 3,
        "gpu_ids": None,
        "gpu_memory_gib": None,
        "gpu_since": None,
    }
    assert failed.closes_ledger(S.RUNNING) and not failed.closes_ledger(S.PAUSED)
    queued = Move(S.QUEUED, "waiting for a GPU", queued_at=at, queue_priority=2)
    assert queued.changes(instance(queued_at=at), frees_gpus=False) == {
        "queued_at": at,
        "queue_priority": 2,
    }
    with pytest.raises(ValueError, match="only a move to starting"):
        Move(S.RUNNING, "x", launch=Launch(3, 7, "1.2", at, Placement("i1", (), None, "")))
