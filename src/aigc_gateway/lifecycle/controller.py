"""The lifecycle controller: the only thing that starts and stops engines.

Users change *desired* state in the store and call :meth:`Controller.kick`. Each instance has one
actor task that reconciles it: it reads the instance, observes the runtime, asks
:func:`~aigc_gateway.domain.reconcile.decide` for the next step, performs it, records the
transition as an event, and repeats until the instance is stable. Then it sleeps until kicked.
A resync job kicks every live instance periodically, which is how crashes are noticed and how a
restarted gateway re-adopts engines that kept running while it was down.

Failures follow the error vocabulary (see :mod:`aigc_gateway.lifecycle.guard`): a temporary
error is retried after its ``delay``, a permanent one fails the instance with its reason, a bug
is logged with its traceback and retried with back-off. Two runtime failures are special: a
``start`` that does not return within ``launch_timeout_s`` fails the instance (and the runtime is
asked to stop whatever it began), and a ``stop`` that fails never lets the instance leave a
state holding a process (its engine may still run, with its GPUs): the instance keeps stopping,
says why in its reason and an event, and the stop is retried with doubling back-off. A state move
is a typed value (:class:`~aigc_gateway.lifecycle.moves.Move`) recorded in one transaction.

The periodic duties (activity flush, idle pauses, budget pauses, resync with the ledger's
midnight cut, storage metering, quota check, lease renewal) live in
:mod:`aigc_gateway.lifecycle.duties`; the controller starts each as its own guarded task
(:class:`~aigc_gateway.lifecycle.guard.Duties`: back-off, metrics), so one failing duty stops no
other, and cancels them on close.

Several gateway processes may share one database (see :mod:`aigc_gateway.lifecycle.cluster`):
an actor first takes its instance's lease and ends if another live process holds it; every state
move is fenced by the lease in its own transaction; GPUs are booked under a lock across processes
from the allocations the store records; routes, events, kicks and freed GPUs reach the other
processes as notices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.accounting.core import PriceBook
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.catalog.schema import Template
from aigc_gateway.domain.clock import wall_clock
from aigc_gateway.domain.reconcile import Phase, Situation, Step, decide
from aigc_gateway.domain.states import (
    HOLDS_PROCESS,
    DesiredState,
    InstanceState,
    can_transition,
    transition,
)
from aigc_gateway.errors import GatewayError, PermanentError, TemporaryError
from aigc_gateway.gpu import Placement, Request, Unplaceable
from aigc_gateway.gpu.broker import GpuBroker, Held, Queued
from aigc_gateway.lifecycle import duties
from aigc_gateway.lifecycle.activity import ActivityTracker
from aigc_gateway.lifecycle.cluster import Cluster, NotHolder
from aigc_gateway.lifecycle.events import EventHub, EventRecord
from aigc_gateway.lifecycle.guard import Backoff, Duties, Sleep, retry_delay
from aigc_gateway.lifecycle.launch import launch_spec
from aigc_gateway.lifecycle.moves import Launch, Move, Progress
from aigc_gateway.lifecycle.routes import Route, RouteTable
from aigc_gateway.metrics import Metrics
from aigc_gateway.runtime.base import GpuGrant, LaunchSpec, ReadinessTimeout, Runtime, Workload
from aigc_gateway.storage.quota import QuotaWatch, StorageQuotas
from aigc_gateway.store import instances as repo
from aigc_gateway.store import usage
from aigc_gateway.store.db import Database
from aigc_gateway.store.instances import InstanceChanges
from aigc_gateway.store.tables import Event, GpuCordon, Instance, Volume
from aigc_gateway.store.usage import Holding

log = logging.getLogger(__name__)


S = InstanceState


class Controller:
    """Owns the actor tasks. ``start()`` adopts and begins resyncing; ``close()`` cancels tasks
    but leaves engines running (they are re-adopted by the next gateway process)."""

    def __init__(
        self,
        *,
        db: Database,
        runtime: Runtime,
        registry: TemplateRegistry,
        hub: EventHub,
        resync_interval_s: float,
        log_max_bytes: int,
        stop_grace_s: float,
        routes: RouteTable | None = None,
        activity: ActivityTracker | None = None,
        gpus: GpuBroker | None = None,
        pricebook: PriceBook | None = None,
        over_budget: Callable[[], Awaitable[list[str]]] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Sleep | None = None,
        launch_timeout_s: float = 120.0,
        storage_check_s: float = 60.0,
        cluster: Cluster | None = None,
    ) -> None:
        self._db = db
        self._runtime = runtime
        self._registry = registry
        self._hub = hub
        self._resync_interval_s = resync_interval_s
        self._log_max_bytes = log_max_bytes
        self._stop_grace_s = stop_grace_s
        # `is None`, not `or`: an empty route table is falsy and must still be the one given.
        self.routes = routes if routes is not None else RouteTable()
        self.activity = activity if activity is not None else ActivityTracker()
        self.gpus = gpus if gpus is not None else GpuBroker([], "no GPU inventory")
        self.pricebook = pricebook if pricebook is not None else PriceBook.default()
        self._over_budget = over_budget
        """Instances to pause because their owner's budget says so (see accounting.services.budgets)."""
        self.metrics = metrics or Metrics()
        self.clock: Callable[[], datetime] = clock or wall_clock
        """The time the ledger records: the composition root's one clock (tests: a fake)."""
        self._real_clock = self.clock is wall_clock
        self._sleep: Sleep = sleep or asyncio.sleep
        """How loops and back-offs wait (tests give fake time)."""
        self._launch_timeout_s = launch_timeout_s
        self._quotas = StorageQuotas(registry=registry, volumes=runtime.volumes)
        self._storage_check_s = storage_check_s
        self._stop_backoff: dict[str, Backoff] = {}
        """Per instance whose engine the runtime failed to stop: the next retry's delay."""
        self._wake: dict[str, asyncio.Event] = {}
        self._actors: dict[str, asyncio.Task[None]] = {}
        self._duties = Duties(metrics=self.metrics, sleep=self._sleep, prefix="controller-job-")
        self._notices: asyncio.Task[None] | None = None
        self.cluster = cluster if cluster is not None else Cluster(db, lease_ttl_s=15.0)
        """This process among the gateways on the store: leases, notices."""
        self._resync = duties.Resync(
            db=db,
            runtime=runtime,
            cluster=self.cluster,
            pricebook=self.pricebook,
            clock=lambda: self.clock(),
            stop_grace_s=stop_grace_s,
            kick=lambda instance_id: self.kick(instance_id, forward=False),
            reload_routes=self.reload_routes,
            admit=self.admit,
        )
        self.routes.on_change = lambda instance_id: self.cluster.announce("route", instance_id)
        self._hub.on_publish = lambda r: self.cluster.announce("event", f"{r.instance_id}:{r.id}")
        self._chores: set[asyncio.Task[None]] = set()
        self._last_event_chore: asyncio.Task[None] | None = None
        """Work started by a notice (re-reading a route), cancelled on close."""

    # -- public ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.cluster.on("route", lambda iid: self._chore(f"route-{iid}", self._reload_route(iid)))
        self.cluster.on("event", self._on_event_notice)
        self.cluster.on("kick", self._heard_kick)
        self.cluster.on("gpus", lambda _: self._chore("gpus", self._gpus_freed()))
        self.cluster.on_reconnect(self.reload_routes)
        held: list[Held] = []
        queued: list[Queued] = []
        async with self._db.read() as session:
            for inst in await repo.list_for(session, owner_id=None):
                self.routes.put(Route.of(inst))
                if inst.last_activity_at is not None:
                    self.activity.seed(inst.id, inst.last_activity_at.timestamp())
                if inst.gpu_ids and S(inst.state) in HOLDS_PROCESS:
                    held.append(
                        Held(
                            inst.id,
                            tuple(inst.gpu_ids),
                            inst.gpu_memory_gib,
                            (inst.gpu_since or inst.updated_at).timestamp(),
                            inst.placement or "",
                        )
                    )
                elif inst.state == S.QUEUED and inst.desired_state == DesiredState.RUNNING:
                    request = await self._gpu_request(inst)
                    if request is not None:
                        since = (inst.queued_at or inst.updated_at).timestamp()
                        queued.append(Queued(request, inst.queue_priority, since))
            cordons = {c.gpu_id: c.mode for c in await session.scalars(select(GpuCordon))}
        for dropped in self.gpus.restore(held, queued, cordons):
            log.warning(
                "GPU allocation no longer fits the inventory", extra={"instance_id": dropped}
            )
        await self.resync()
        self._start_duties()

    def _start_duties(self) -> None:
        """One guarded task per periodic duty (see :mod:`aigc_gateway.lifecycle.duties`), each
        with its own back-off and metrics, so one failing duty stops no other."""
        every = self._duties.every
        period = self._resync_interval_s
        every("activity", duties.ActivityFlush(self._db, self.activity).step, period_s=period)
        idle = duties.IdlePauses(
            db=self._db,
            routes=self.routes,
            registry=self._registry,
            activity=self.activity,
            cluster=self.cluster,
            kick=self.kick,
        )
        every("idle", idle.step, period_s=period)
        budget = duties.BudgetPauses(
            db=self._db,
            routes=self.routes,
            cluster=self.cluster,
            over_budget=self._over_budget,
            kick=self.kick,
        )
        every("budget", budget.step, period_s=period)
        every("resync", self._resync.step, period_s=period)
        metering = duties.StorageMetering(
            db=self._db,
            volumes=self._runtime.volumes,
            pricebook=self.pricebook,
            clock=lambda: self.clock(),
        )
        every("storage", metering.step, period_s=period)
        quota = duties.QuotaCheck(
            db=self._db,
            hub=self._hub,
            watch=QuotaWatch(self._quotas),
            check_s=self._storage_check_s,
        )
        every("quota", quota.step, period_s=period)
        # Leases expire on the wall clock, shared with the other processes: renewed on real
        # time even where the loops run on a test's fake time.
        leases = duties.LeaseRenewal(self.cluster, self._lease_lost)
        every("leases", leases.step, period_s=self.cluster.renew_every_s, sleep=asyncio.sleep)
        self._notices = asyncio.create_task(self.cluster.listen(), name="cluster-notices")

    async def close(self) -> None:
        """Cancel every task and give the leases back (engines keep running: the next holder,
        another process or this one restarted, adopts them)."""
        tasks = [*self._actors.values(), *self._chores]
        if self._notices is not None:
            tasks.append(self._notices)
        for task in tasks:
            task.cancel()
        await asyncio.gather(self._duties.close(), *tasks, return_exceptions=True)
        self._actors.clear()
        self._notices = None
        try:
            await self.cluster.release_all()
        except GatewayError as exc:  # the leases expire on their own
            log.warning("could not give the leases back: %s", exc.message)

    def route_changed(self, inst: Instance) -> None:
        """``inst`` was changed in the store by a user's action (created, renamed, resumed…):
        put its route here, and announce it to the other processes. The controller is the route
        table's one writer; everyone else reads it or calls this."""
        self.routes.put(Route.of(inst))

    def kick(self, instance_id: str, *, forward: bool = True) -> None:
        """Ask for ``instance_id`` to be reconciled now (cheap, idempotent). When this process
        does not hold its lease, the others are told too (``forward``), so its holder hears."""
        if forward and instance_id not in self.cluster.held:
            self.cluster.announce("kick", instance_id)
        self._wake.setdefault(instance_id, asyncio.Event()).set()
        actor = self._actors.get(instance_id)
        if actor is None or actor.done():
            self._actors[instance_id] = asyncio.create_task(
                self._actor(instance_id), name=f"instance-{instance_id}"
            )

    @property
    def alive(self) -> bool:
        """Every periodic duty is running (a failing one retries; only a cancelled one ends),
        and so is the listener for the other processes' notices."""
        notices = self._notices is not None and not self._notices.done()
        return self._duties.alive and notices

    @property
    def resyncs(self) -> int:
        """Completed resync passes: the health page shows the loop is alive."""
        return self._resync.passes

    async def resync(self) -> None:
        """One resync pass now (see :class:`~aigc_gateway.lifecycle.duties.Resync`)."""
        await self._resync.step()

    def _lease_lost(self, instance_id: str) -> None:
        """Another process drives ``instance_id`` now (its lease was lost): stop driving it."""
        actor = self._actors.pop(instance_id, None)
        if actor is not None:
            actor.cancel()
        self._wake.pop(instance_id, None)
        self.gpus.leave_queue(instance_id)
        if self.gpus.release(instance_id):  # its new holder books its GPUs from the store
            self.admit()

    async def reload_routes(self) -> None:
        """Re-read every route from the store (notices from other processes may have been
        missed), and the GPU allocations with them."""
        async with self._db.read() as session:
            rows = await repo.list_for(session, owner_id=None)
            await self._sync_gpus(session)
        known = {r.instance_id for r in self.routes.all()}
        for inst in rows:
            self.routes.put(Route.of(inst), announce=False)
            known.discard(inst.id)
        for gone in known:
            self.routes.remove(gone, announce=False)

    def admit(self) -> None:
        """Start queued instances that fit now (after a release, an uncordon, a resync)."""
        admission = self.gpus.admit()
        for placement in admission.placed:
            self.kick(placement.instance_id)
        for refused in admission.never:
            self.kick(refused.instance_id)  # its launch finds it can never fit, and fails it
        if admission.elsewhere:
            self.cluster.announce("gpus")  # an earlier waiter's turn, in another process

    # -- notices from the other gateway processes ----------------------------------------------

    def _chore(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` (a notice's consequence) in a task of its own, tracked for close; a
        failure is logged (the resync re-reads the store anyway)."""
        task = asyncio.create_task(self._logged(name, work), name=f"notice-{name}")
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    def _on_event_notice(self, subject: str) -> None:
        """Hand events heard from other processes on in the order they were sent: a listener
        skips ids below the last it saw, so one overtaken by the next would be lost."""
        previous = self._last_event_chore

        async def in_turn() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self._heard_event(subject)

        self._last_event_chore = self._chore("event", in_turn())

    @staticmethod
    async def _logged(name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            log.warning("notice %s: %s", name, exc.message)
        except Exception:
            log.exception("notice %s failed", name)

    async def _reload_route(self, instance_id: str) -> None:
        """Re-read one instance's route from the store (another process changed it)."""
        async with self._db.read() as session:
            inst = await repo.get(session, instance_id)
        if inst is None:
            self.routes.remove(instance_id, announce=False)
        else:
            self.routes.put(Route.of(inst), announce=False)
        if self.gpus.waits_elsewhere(instance_id):  # it started or left: the queue moved on
            await self._gpus_freed()

    async def _heard_event(self, subject: str) -> None:
        """Another process recorded an event: hand it to the listeners here, if any."""
        instance_id, _, event_id = subject.partition(":")
        if not self._hub.listened(instance_id) or not event_id.isdigit():
            return
        async with self._db.read() as session:
            ev = await session.get(Event, int(event_id))
        if ev is not None:
            self._hub.publish(EventRecord.of(ev), announce=False)

    def _heard_kick(self, instance_id: str) -> None:
        """Another process was asked to reconcile an instance: the holder does it."""
        if instance_id in self.cluster.held:
            self.kick(instance_id, forward=False)

    async def _gpus_freed(self) -> None:
        """Another process freed GPUs: re-read the allocations and admit who waits here."""
        async with self._db.read() as session:
            await self._sync_gpus(session)
        self.admit()

    # -- tasks ----------------------------------------------------------------------------------

    async def _actor(self, instance_id: str) -> None:
        """Reconcile ``instance_id`` whenever kicked, until it is gone. A failed pass is retried
        as the error vocabulary says (:func:`~aigc_gateway.lifecycle.guard.retry_delay`), sooner
        if kicked meanwhile."""
        wake = self._wake[instance_id]
        backoff = Backoff()
        while True:
            wake.clear()
            try:
                gone = await self._reconcile(instance_id, wake)
            except asyncio.CancelledError:
                raise
            except NotHolder:
                # Its lease lapsed (this process stalled); take it again unless another
                # process has, which then drives it.
                if await self.cluster.take(instance_id):
                    continue
                log.info("driven by another gateway now", extra={"instance_id": instance_id})
                await self._reload_route(instance_id)
                self._wake.pop(instance_id, None)
                return
            except Exception as exc:
                extra = {"instance_id": instance_id}
                delay = retry_delay(exc, backoff, what="reconcile", extra=extra)
                await self._rest(delay, wake)
                continue
            backoff.reset()
            if gone:
                self._wake.pop(instance_id, None)
                return
            await wake.wait()

    async def _rest(self, delay: float, wake: asyncio.Event) -> None:
        """Wait ``delay`` seconds (on the controller's clock), or less if kicked meanwhile."""
        if delay <= 0:
            return
        me = asyncio.current_task()
        name = f"{me.get_name() if me else 'controller'}-backoff"  # fake time tells them apart
        rest = asyncio.create_task(self._nap(delay), name=name)
        woken = asyncio.create_task(wake.wait())
        try:
            await asyncio.wait({rest, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (rest, woken):
                task.cancel()
            await asyncio.gather(rest, woken, return_exceptions=True)

    async def _nap(self, delay: float) -> None:
        await self._sleep(delay)

    # -- one reconcile pass ---------------------------------------------------------------------

    async def _reconcile(self, instance_id: str, wake: asyncio.Event) -> bool:
        """Drive the instance until it is stable; return True when it no longer exists here (it
        is gone, or another gateway process drives it)."""
        if instance_id not in self.cluster.held and not await self.cluster.take(instance_id):
            return True
        while True:
            async with self._db.read() as session:
                inst = await repo.get(session, instance_id)
            if inst is None or inst.state == S.DELETED:
                await self.cluster.release(instance_id)
                return True
            work = await self._runtime.observe(instance_id)
            situation = Situation(
                desired=DesiredState(inst.desired_state),
                state=S(inst.state),
                phase=work.phase,
                restart_pending=inst.generation > inst.launched_generation,
                spawned=inst.pid is not None,
            )
            step = decide(situation)
            if step is Step.NOTHING:
                return False
            log.debug("step %s", step, extra={"instance_id": instance_id, "state": inst.state})
            try:
                await self._perform(step, inst, work, wake)
            except PermanentError as exc:
                await self._fail(inst, step, exc)
                return False  # the resync or a user action tries again, not a hot loop
            if step is Step.LAUNCH and inst.state == S.QUEUED:
                return False  # waits for GPUs: admission kicks it

    async def _perform(
        self, step: Step, inst: Instance, work: Workload, wake: asyncio.Event
    ) -> None:
        actions: dict[Step, Callable[[], Awaitable[None]]] = {
            Step.LAUNCH: lambda: self._launch(inst),
            Step.AWAIT_READY: lambda: self._await_ready(inst, wake),
            Step.MARK_RUNNING: lambda: self._mark_running(inst, work),
            Step.STOP: lambda: self._stop(inst),
            Step.MARK_PAUSED: lambda: self._mark_paused(inst, work),
            Step.MARK_FAILED: lambda: self._mark_failed(inst, work),
            Step.DELETE: lambda: self._delete(inst, work),
        }
        await actions[step]()

    async def _fail(self, inst: Instance, step: Step, exc: PermanentError) -> None:
        """``step`` failed for good: the instance fails with the error's message. Where its
        state cannot fail (paused, say) the error is a bug and goes to the actor's back-off."""
        if not can_transition(S(inst.state), S.FAILED):
            raise exc
        log.warning("%s failed for good: %s", step, exc.message, extra={"instance_id": inst.id})
        await self._move(inst, Move(S.FAILED, exc.message))

    async def _move(
        self, inst: Instance, move: Move, *, session: AsyncSession | None = None
    ) -> Callable[[], None]:
        """Record ``move`` of ``inst`` and its start-progress events in one transaction, fenced
        by this process's lease (:class:`NotHolder` when another process drives the instance
        now). A move to starting opens the usage intervals of its launch's holdings; a move to a
        state without a process closes them (at ``move.ended_at``, when the engine ended, or
        where that is unknown at the last time it was seen alive) and frees the instance's GPUs,
        in the same transaction.

        Without ``session`` the move is committed and applied here (the instance, the broker,
        the route, the events' listeners); with one, it is recorded in that transaction and the
        returned function applies it, to be called once the caller has committed."""
        source, target = S(inst.state), move.target
        step = transition(source, target, move.reason)
        frees_gpus = target not in HOLDS_PROCESS and (
            inst.gpu_ids is not None or self.gpus.inventory.allocation(inst.id) is not None
        )
        changes = move.changes(inst, frees_gpus=frees_gpus)
        launch = move.launch

        async def record(session: AsyncSession) -> list[Event]:
            await self.cluster.fence(session, inst.id)
            events = [await repo.apply_transition(session, inst, step, **changes)]
            # The ledger moves with the state, in the same transaction.
            if launch is not None and launch.holdings:
                await usage.open_intervals(
                    session,
                    instance_id=inst.id,
                    instance_name=inst.name,
                    user_id=inst.owner_id,
                    template_id=inst.template_id,
                    template_version=launch.template_version,
                    holdings=launch.holdings,
                    at=self.clock(),
                    currency=self.pricebook.currency,
                )
            if move.closes_ledger(source):
                await usage.close_intervals(
                    session, inst.id, end=move.ended_at, pricebook=self.pricebook
                )
            for progress in move.progress:
                events.append(await self._progress_event(session, inst, progress))
            return events

        def apply(events: list[Event]) -> None:
            inst.state, inst.reason = target.value, move.reason
            _apply_changes(inst, changes)
            if target is not S.QUEUED:
                self.gpus.leave_queue(inst.id)
            if frees_gpus and self.gpus.release(inst.id):
                self.admit()
            if frees_gpus:
                self.cluster.announce("gpus")  # the others' queues may fit now
            self.routes.put(Route.of(inst))
            for ev in events:
                self._hub.publish(EventRecord.of(ev))
            log.info(
                "%s → %s: %s", step.source, step.target, move.reason, extra={"instance_id": inst.id}
            )

        if session is not None:
            recorded = await record(session)
            return lambda: apply(recorded)
        async with self._db.write() as fresh:
            recorded = await record(fresh)
        apply(recorded)
        return lambda: None

    async def _event(self, inst: Instance, kind: str, message: str, **data: Any) -> None:
        async with self._db.write() as session:
            ev = await repo.add_event(
                session, instance_id=inst.id, kind=kind, message=message, data=data
            )
        self._hub.publish(EventRecord.of(ev))

    @staticmethod
    async def _progress_event(session: AsyncSession, inst: Instance, progress: Progress) -> Event:
        return await repo.add_event(
            session,
            instance_id=inst.id,
            kind="progress",
            message=progress.message,
            data=progress.event_data(),
        )

    async def _template_for(self, inst: Instance) -> tuple[Template, int, str]:
        """The template to launch: the loaded file if it is still the same version (so a fixed
        template applies on the next start), else the revision the instance was created with."""
        loaded = self._registry.get(inst.template_id)
        async with self._db.read() as session:
            rev = await repo.revision(session, inst.template_revision_id)
        if loaded is not None and loaded.template.version == rev.version:
            rev_id = self._registry.revision_ids.get(loaded.id, rev.id)
            return loaded.template, rev_id, loaded.install_problem
        return Template.model_validate(rev.spec), rev.id, ""

    def _holdings(self, placement: Placement) -> list[Holding]:
        """What the ledger records for a placement: CPU only, a share, or whole GPUs by type."""
        if not placement.gpu_ids:
            return [Holding("cpu")]
        cards = [self.gpus.gpu(g) for g in placement.gpu_ids]
        if placement.memory_gib is not None:
            card = cards[0]
            return [
                Holding(
                    "gpu_share",
                    gpu_type=card.type if card else None,
                    gpu_pool=card.pool if card else None,
                    share_gib=placement.memory_gib,
                )
            ]
        groups: dict[tuple[str | None, str | None], int] = {}
        for card in cards:
            key = (card.type if card else None, card.pool if card else None)
            groups[key] = groups.get(key, 0) + 1
        return [Holding("gpu", gpu_type=t, gpu_pool=p, gpu_count=n) for (t, p), n in groups.items()]

    async def _gpu_request(self, inst: Instance) -> Request | None:
        template, _, _ = await self._template_for(inst)
        gpu = template.resources.gpu
        return Request.from_gpu_request(inst.id, gpu) if gpu.wanted else None

    async def _take_gpus(
        self, session: AsyncSession, inst: Instance, template: Template
    ) -> Placement | Unplaceable:
        """GPUs for the launch, or why not (the caller records it). In ``session``'s
        transaction, holding the store's GPU lock: the allocations are first re-read from the
        store, so a card another gateway process booked is never booked again here; the
        caller records the placement in the same transaction. Templates without GPUs get an
        empty placement."""
        gpu = template.resources.gpu
        if not gpu.wanted:
            return Placement(inst.id, (), None, "")
        await self._db.serialise(session, "gpus")
        await self._sync_gpus(session)
        return self.gpus.acquire(Request.from_gpu_request(inst.id, gpu), priority=gpu.priority)

    async def _sync_gpus(self, session: AsyncSession) -> None:
        """Make the broker's allocations the store's (other processes book GPUs too)."""
        held = [
            Held(
                inst.id,
                tuple(inst.gpu_ids or ()),
                inst.gpu_memory_gib,
                (inst.gpu_since or inst.updated_at).timestamp(),
                inst.placement or "",
            )
            for inst in await session.scalars(
                select(Instance).where(
                    Instance.gpu_ids.is_not(None),
                    Instance.state.in_([s.value for s in HOLDS_PROCESS]),
                )
            )
            if inst.gpu_ids
        ]
        self.gpus.sync_held(held)
        if self.cluster.shared:
            self.gpus.sync_queue(await self._queued_elsewhere(session))

    async def _queued_elsewhere(self, session: AsyncSession) -> list[Queued]:
        """The store's waiters for GPUs that other gateway processes drive, with their place
        (priority, time queued): this process queues behind them, never starts them."""
        elsewhere = await self.cluster.driven_elsewhere(session)
        if not elsewhere:
            return []
        waiting = await session.scalars(
            select(Instance).where(
                Instance.id.in_(elsewhere),
                Instance.state == S.QUEUED.value,
                Instance.desired_state == DesiredState.RUNNING.value,
            )
        )
        queued = []
        for inst in waiting:
            request = await self._gpu_request(inst)
            if request is not None:
                since = (inst.queued_at or inst.updated_at).timestamp()
                queued.append(Queued(request, inst.queue_priority, since))
        return queued

    async def _refuse_or_queue(
        self, inst: Instance, template: Template, why: Unplaceable, priority: int
    ) -> None:
        if why.never:
            reason = (
                f"{template.display.name.en} cannot be placed on this gateway's GPUs: {why.reason}"
            )
            if not can_transition(S(inst.state), S.FAILED):
                await self._move(inst, Move(S.STARTING, "asking for GPUs"))
            await self._move(inst, Move(S.FAILED, reason))
            return
        info = self.gpus.queue_info(inst.id)
        if inst.state == S.QUEUED:
            return  # already waiting; the API shows the live position
        data: dict[str, object] = {}
        if info is not None:
            data = {"position": info.position, "estimate_s": info.estimate_s}
        queued = Move(
            S.QUEUED,
            why.reason,
            progress=(Progress(0, data),),
            queued_at=datetime.fromtimestamp(info.since if info else time.time(), UTC),
            queue_priority=priority,
        )
        await self._move(inst, queued)

    async def _launch(self, inst: Instance) -> None:
        """Take GPUs, record "starting" (which opens the ledger), then hand the engine to the
        runtime. The GPUs are taken and recorded in one transaction under the store's GPU lock
        (see :meth:`_take_gpus`). An instance recorded as starting whose engine never reached
        the runtime (the gateway died in between, or the runtime said "not now") goes straight
        to the runtime with what was recorded: ``start`` is idempotent."""
        if inst.state == S.STARTING:
            await self._relaunch(inst)
            return
        template, rev_id, problem = await self._template_for(inst)
        decision: Placement | Unplaceable = Placement(inst.id, (), None, "")
        try:
            async with self._db.write() as session:
                if not problem:
                    decision = await self._take_gpus(session, inst, template)
                if isinstance(decision, Placement):
                    applied = await self._record_start(
                        session, inst, template, rev_id, problem, decision
                    )
        except BaseException:
            if self.gpus.release(inst.id):  # not recorded: give the GPUs back
                self.admit()
            raise
        if not isinstance(decision, Placement):
            await self._refuse_or_queue(inst, template, decision, template.resources.gpu.priority)
            return
        applied()
        if problem:
            await self._move(inst, Move(S.FAILED, problem))
            return
        grant = self.gpus.grant(decision) if decision.gpu_ids else None
        await self._spawn(inst, template, decision, grant)

    async def _record_start(
        self,
        session: AsyncSession,
        inst: Instance,
        template: Template,
        rev_id: int,
        problem: str,
        placement: Placement,
    ) -> Callable[[], None]:
        """Record the move to starting with its GPUs in ``session``; return what applies it. An
        engine that cannot be installed (``problem``) opens no ledger: it fails next."""
        launch = Launch(
            generation=inst.generation,
            template_revision_id=rev_id,
            template_version=template.version,
            at=datetime.now(UTC),
            placement=placement,
            holdings=() if problem else self._holdings(placement),
        )
        starting = Move(
            S.STARTING,
            f"starting {template.display.name.en} {template.version}",
            progress=() if problem else (Progress(1), Progress(2)),
            launch=launch,
        )
        return await self._move(inst, starting, session=session)

    async def _relaunch(self, inst: Instance) -> None:
        """Hand a recorded start to the runtime: the template and GPUs recorded with it."""
        template, _, problem = await self._template_for(inst)
        if problem:
            await self._move(inst, Move(S.FAILED, problem, ended_at=self.clock()))
            return
        gpu_ids = tuple(inst.gpu_ids or ())
        placement = Placement(inst.id, gpu_ids, inst.gpu_memory_gib, inst.placement or "")
        grant = self.gpus.grant(placement) if gpu_ids else None
        await self._spawn(inst, template, placement, grant)

    async def _spawn(
        self, inst: Instance, template: Template, placement: Placement, grant: GpuGrant | None
    ) -> None:
        """Ask the runtime to start the engine of a starting instance and record its process.
        A :class:`PermanentError` fails the instance; a temporary one leaves it starting, for
        the actor to retry after the error's delay."""
        async with self._db.read() as session:
            volume = await session.get(Volume, inst.volume_id)
        assert volume is not None
        data_dir = await self._runtime.volumes.create(
            volume.user_id, volume.family, self._quotas.quota_bytes(volume.family)
        )
        spec = launch_spec(
            instance_id=inst.id,
            template=template,
            data_dir=data_dir,
            log_max_bytes=self._log_max_bytes,
            labels={"owner": inst.owner_id, "template": template.id, "slug": inst.slug},
            gpu=grant,
            default_grace_s=self._stop_grace_s,
        )
        try:
            work = await self._start_within(spec)
        except PermanentError as exc:
            await self._move(inst, Move(S.FAILED, exc.message, ended_at=self.clock()))
            return
        spawned: dict[str, object] = {
            "pid": work.pid,
            "endpoint": work.address,
            "spawned_at": work.started_at,
        }
        if placement.explanation:
            spawned["placement"] = placement.explanation
        async with self._db.write() as session:
            await self.cluster.fence(session, inst.id)
            await repo.set_fields(session, inst.id, pid=work.pid, endpoint=work.address)
            ev = await self._progress_event(session, inst, Progress(3, spawned))
        inst.pid, inst.endpoint = work.pid, work.address
        self._hub.publish(EventRecord.of(ev))

    async def _start_within(self, spec: LaunchSpec) -> Workload:
        """The runtime's ``start``, given ``launch_timeout_s`` (on the controller's clock) to
        return. One that hangs is cancelled, the runtime is asked to stop whatever it began, and
        a :class:`PermanentError` says so."""
        start = asyncio.create_task(self._runtime.start(spec))
        deadline = asyncio.create_task(
            self._nap(self._launch_timeout_s), name=f"launch-timeout-{spec.instance_id}"
        )
        try:
            await asyncio.wait({start, deadline}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            deadline.cancel()
            if not start.done():
                start.cancel()
            await asyncio.gather(start, deadline, return_exceptions=True)
        if not start.cancelled():
            return start.result()
        log.warning("runtime start timed out", extra={"instance_id": spec.instance_id})
        cleanup = ""
        try:
            await self._runtime.stop(spec.instance_id, grace=0.0)
        except GatewayError as exc:
            cleanup = f" (stopping what it began failed too: {exc.message})"
        raise PermanentError(
            f"the {self._runtime.name} runtime did not launch the engine within "
            f"{self._launch_timeout_s:g} s; whatever it began was stopped{cleanup}. "
            "Start the instance again; if this repeats, the administrator should check the "
            "runtime (its host, its logs)"
        )

    async def _stop_engine(self, inst: Instance, grace: float) -> Workload:
        """The runtime's ``stop`` of the instance's engine. A stop that fails leaves the engine
        possibly running: the instance must not leave the state it is in, so the failure is
        reported (reason and event) and retried with doubling back-off (a
        :class:`TemporaryError` for the actor, with that delay)."""
        try:
            stopped = await self._runtime.stop(inst.id, grace=grace)
        except GatewayError as exc:
            backoff = self._stop_backoff.setdefault(inst.id, Backoff(first=1.0, most=300.0))
            delay = exc.delay if isinstance(exc, TemporaryError) else backoff.next()
            failure = (
                f"the runtime could not stop the engine: {exc.message}; it may still be running, "
                "so its resources stay held"
            )
            why = f"{failure}; retrying in {delay:g} s"
            async with self._db.write() as session:
                await repo.set_fields(session, inst.id, reason=why)
                ev = await repo.add_event(
                    session, instance_id=inst.id, kind="error", message=why, data={}
                )
            inst.reason = why
            self._hub.publish(EventRecord.of(ev))
            raise TemporaryError(failure, delay=delay) from exc
        self._stop_backoff.pop(inst.id, None)
        return stopped

    async def _await_ready(self, inst: Instance, wake: asyncio.Event) -> None:
        template, _, _ = await self._template_for(inst)
        started = inst.started_at or datetime.now(UTC)
        left = template.readiness.timeout_s - (datetime.now(UTC) - started).total_seconds()
        ready = asyncio.create_task(self._runtime.wait_ready(inst.id, timeout=max(left, 0.0)))
        woken = asyncio.create_task(wake.wait())
        try:
            await asyncio.wait({ready, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, woken):
                task.cancel()
            await asyncio.gather(ready, woken, return_exceptions=True)
        if not ready.cancelled() and isinstance(timeout := ready.exception(), ReadinessTimeout):
            reason = timeout.reason(template.readiness.timeout_s)  # not what was left of it
            stopped = await self._stop_engine(inst, self._grace(template))
            ended = self._ledger_time(stopped.exited_at) or self.clock()
            await self._move(inst, Move(S.FAILED, reason, ended_at=ended))
        elif woken.done() and not woken.cancelled():
            wake.clear()  # consumed: the next pass re-reads what changed
        elif not ready.cancelled() and ready.exception() is not None:
            raise ready.exception()  # type: ignore[misc]

    async def _mark_running(self, inst: Instance, work: Workload) -> None:
        ready = datetime.now(UTC)
        running = Move(
            S.RUNNING,
            "engine is ready",
            progress=(Progress(4, {"endpoint": work.address}),),
            ready_at=ready,
            pid=work.pid,
            endpoint=work.address,
        )
        await self._move(inst, running)
        if inst.started_at is not None:
            self.metrics.instance_started(
                inst.template_id, (ready - inst.started_at).total_seconds()
            )

    async def _mark_failed(self, inst: Instance, work: Workload) -> None:
        if work.phase is Phase.EXITED:
            reason = work.message or f"engine exited with code {work.exit_code}"
        else:
            reason = "engine process is gone (no exit code recorded)"
        tail = work.log_tail or await self._runtime.logs(inst.id, tail_bytes=4096)
        # What the engine left behind (children holding GPU memory, a card's MPS daemon, or the
        # whole engine when only its supervisor was killed: that one gets the polite stop) goes
        # before its GPUs are given to someone else.
        grace = None if work.phase is Phase.EXITED and work.exit_code is None else 0.0
        ended = await self._end_engine(inst, work, grace=grace)
        await self._move(inst, Move(S.FAILED, reason, ended_at=ended, exit_code=work.exit_code))
        await self._event(inst, "exit", reason, exit_code=work.exit_code, log_tail=tail[-4096:])

    async def _stop(self, inst: Instance) -> None:
        state = S(inst.state)
        if state is not S.STOPPING and can_transition(state, S.STOPPING):
            why = {
                DesiredState.DELETED: "stopping to delete",
                DesiredState.PAUSED: "pausing: stopping the engine, keeping data",
                DesiredState.RUNNING: "restarting: stopping the engine",
            }[DesiredState(inst.desired_state)]
            await self._move(inst, Move(S.STOPPING, why))
        # The runtime persists when the engine ended; the next pass closes the ledger there
        # (also when this process is killed in between).
        await self._stop_engine(inst, await self._grace_for(inst))

    async def _mark_paused(self, inst: Instance, work: Workload) -> None:
        if inst.state == S.QUEUED:
            await self._move(inst, Move(S.PAUSED, "left the GPU queue; data kept"))
            return
        ended = await self._end_engine(inst, work) if inst.state == S.STOPPING else None
        await self._move(inst, Move(S.PAUSED, "paused; data kept", ended_at=ended))

    async def _end_engine(
        self, inst: Instance, work: Workload, *, grace: float | None = None
    ) -> datetime | None:
        """Stop what is left of the engine (idempotent; nothing when it was stopped already) and
        return when it ended, in ledger time: what the runtime recorded (the wrapper's exit file,
        or the stop that saw it go), else ``None`` (the ledger falls back to the last time the
        engine was seen alive)."""
        stopped = await self._stop_engine(
            inst, await self._grace_for(inst) if grace is None else grace
        )
        return self._ledger_time(stopped.exited_at or work.exited_at)

    def _ledger_time(self, at: float | None) -> datetime | None:
        """A runtime instant (seconds since the epoch) on the ledger's clock: that instant on the
        real clock; under a replaced clock (tests), the clock's now, as its time runs apart from
        the engines'."""
        if at is None:
            return None
        return datetime.fromtimestamp(at, UTC) if self._real_clock else self.clock()

    def _grace(self, template: Template) -> float:
        """Seconds between the polite stop signal and the kill: the template's own
        ``launch.stop_grace_s``, else the gateway's setting."""
        own = template.launch.stop_grace_s
        return self._stop_grace_s if own is None else own

    async def _grace_for(self, inst: Instance) -> float:
        """The stop grace of the instance's template (the setting if it cannot be read)."""
        try:
            return self._grace((await self._template_for(inst))[0])
        except GatewayError:
            return self._stop_grace_s

    async def _delete(self, inst: Instance, work: Workload) -> None:
        state = S(inst.state)
        if state in (S.STARTING, S.RUNNING):
            await self._move(inst, Move(S.STOPPING, "stopping to delete"))
            state = S.STOPPING
        if state is S.STOPPING:
            ended = await self._end_engine(inst, work)
            await self._move(inst, Move(S.PAUSED, "stopped to delete", ended_at=ended))
            state = S.PAUSED
        if state is not S.DELETING:
            why = "deleting" + (" with data" if inst.delete_data else "")
            await self._move(inst, Move(S.DELETING, why))
        await self._runtime.forget(inst.id)
        if inst.delete_data:
            await self._delete_volume(inst)
        await self._move(
            inst, Move(S.DELETED, "deleted" + ("" if inst.delete_data else "; data kept"))
        )

    async def _delete_volume(self, inst: Instance) -> None:
        async with self._db.read() as session:
            volume = await session.get(Volume, inst.volume_id)
            shared = volume is not None and await repo.volume_in_use(
                session, volume.id, but=inst.id
            )
        if volume is None:
            return
        if shared:
            await self._event(inst, "data", "data kept: another of your instances uses this folder")
            return
        await self._runtime.volumes.delete(volume.user_id, volume.family)
        await self._event(inst, "data", "data deleted")


def _apply_changes(inst: Instance, changes: InstanceChanges) -> None:
    """Set on the loaded ``inst`` what a committed move set in the store."""
    for key, value in changes.items():
        setattr(inst, key, value)
