"""The controller's periodic duties, each a small object with only what it needs.

Each duty's :meth:`step` is one pass of its work; the controller runs each as its own guarded
task (:class:`~aigc_gateway.lifecycle.guard.Duties`), so a failing duty is counted, logged and
retried with back-off while the others keep going. A step raises to say it failed; it never
catches the failure of a whole pass itself. What a duty does to an instance's lifecycle it asks of
the controller through the callables it is given (``kick``, ``admit``): the actors stay the
controller's.

The template folder watch (:class:`TemplateWatch`) and the SIGHUP reload (:class:`Poke`) are
triggers for the same guarded runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from aigc_gateway.accounting.core import PriceBook
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.domain.states import InstanceState
from aigc_gateway.errors import GatewayError
from aigc_gateway.lifecycle.activity import ActivityTracker
from aigc_gateway.lifecycle.cluster import Cluster
from aigc_gateway.lifecycle.events import EventHub, EventRecord
from aigc_gateway.lifecycle.routes import Route, RouteTable
from aigc_gateway.runtime.base import Runtime
from aigc_gateway.runtime.volumes import Volumes
from aigc_gateway.storage.quota import QuotaWatch
from aigc_gateway.store import instances as repo
from aigc_gateway.store import usage
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Instance, Volume

log = logging.getLogger(__name__)

Kick = Callable[[str], None]
"""Ask the controller to reconcile an instance now."""


class ActivityFlush:
    """Writes the proxy's activity marks to the store, one batch per step."""

    def __init__(self, db: Database, activity: ActivityTracker) -> None:
        self._db = db
        self._activity = activity

    async def step(self) -> None:
        changed = self._activity.drain()
        if changed:
            async with self._db.write() as session:
                await repo.set_activity(session, changed)
                await usage.add_activity(session, changed)


class IdlePauses:
    """Releases engines nobody used for their template's ``idle.pause_after_minutes``: the
    instance is paused (desired state), its data kept; the next request wakes it. Only the
    instances this process drives; with other processes on the store, the activity they
    flushed there counts too."""

    def __init__(
        self,
        *,
        db: Database,
        routes: RouteTable,
        registry: TemplateRegistry,
        activity: ActivityTracker,
        cluster: Cluster,
        kick: Kick,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._routes = routes
        self._registry = registry
        self._activity = activity
        self._cluster = cluster
        self._kick = kick
        self._now = now

    async def step(self) -> None:
        now = self._now()
        due: list[tuple[Route, float]] = []
        for route in self._routes.all():
            if route.state != "running" or route.desired_state != "running":
                continue
            if route.instance_id not in self._cluster.held:
                continue  # its holder decides (and the other processes' proxies tell the store)
            loaded = self._registry.get(route.template_id)
            minutes = loaded.template.idle.pause_after_minutes if loaded else None
            if not minutes:
                continue
            last = max(self._activity.last(route.instance_id) or 0.0, route.ready_at or 0.0)
            if last and now - last > minutes * 60:
                due.append((route, minutes))
        if due and self._cluster.shared:
            # Requests proxied by the other gateways count too: they flush them to the store.
            async with self._db.read() as session:
                rows = await session.execute(
                    select(Instance.id, Instance.last_activity_at).where(
                        Instance.id.in_([r.instance_id for r, _ in due])
                    )
                )
                stored = {i: at.timestamp() for i, at in rows.all() if at is not None}
            due = [(r, m) for r, m in due if now - stored.get(r.instance_id, 0.0) > m * 60]
        for route, minutes in due:
            await _pause(
                self._db,
                self._routes,
                self._kick,
                route.instance_id,
                f"paused after {minutes:g} minutes idle (no requests); data kept",
            )


class BudgetPauses:
    """Pauses what runs for budgets past their hard limit with ``pause_when_over`` (those this
    process drives; each holder pauses its own)."""

    def __init__(
        self,
        *,
        db: Database,
        routes: RouteTable,
        cluster: Cluster,
        over_budget: Callable[[], Awaitable[list[str]]] | None,
        kick: Kick,
    ) -> None:
        self._db = db
        self._routes = routes
        self._cluster = cluster
        self._over_budget = over_budget
        self._kick = kick

    async def step(self) -> None:
        if self._over_budget is None:
            return
        for instance_id in await self._over_budget():
            if instance_id not in self._cluster.held:
                continue  # its holder pauses it
            await _pause(
                self._db,
                self._routes,
                self._kick,
                instance_id,
                "paused: the monthly budget is used up; data kept",
            )


async def _pause(
    db: Database, routes: RouteTable, kick: Kick, instance_id: str, reason: str
) -> None:
    """Set the instance's desired state to paused if it still wants to run, then reconcile it."""
    async with db.write() as session:
        paused = await repo.pause_if_running(session, instance_id, reason)
    if paused is not None:
        routes.put(Route.of(paused))
        kick(instance_id)


class Resync:
    """Kicks every live instance this process drives or nobody drives (taking over the leases of
    a process that died), stops workloads no live instance owns, and (when other processes share
    the store) re-reads the routes and GPU allocations they changed. Then the ledger: the engines
    this process vouches for are observed alive, and the day is cut at midnight (once, for all
    processes, under the store's ledger lock). ``passes`` counts the completed steps (the health
    page shows the loop is alive)."""

    def __init__(
        self,
        *,
        db: Database,
        runtime: Runtime,
        cluster: Cluster,
        pricebook: PriceBook,
        clock: Callable[[], datetime],
        stop_grace_s: float,
        kick: Kick,
        reload_routes: Callable[[], Awaitable[None]],
        admit: Callable[[], None],
    ) -> None:
        self._db = db
        self._runtime = runtime
        self._cluster = cluster
        self._pricebook = pricebook
        self._clock = clock
        self._stop_grace_s = stop_grace_s
        self._kick = kick
        self._reload_routes = reload_routes
        self._admit = admit
        self.passes = 0

    async def step(self) -> None:
        async with self._db.read() as session:
            live = set(await repo.live_ids(session))
        mine = set(await self._cluster.drivable(live))
        for instance_id in mine:
            self._kick(instance_id)
        if self._cluster.shared:
            await self._reload_routes()
        alive = []
        for work in await self._runtime.list():
            if work.instance_id not in live and work.phase.alive:
                await self._stop_orphan(work.instance_id)
            elif work.phase.alive:
                alive.append(work.instance_id)
        async with self._db.write() as session:
            now = self._clock()
            # Each holder vouches for its own engines; one cut at midnight for all processes.
            await usage.observe(session, [i for i in alive if i in mine], now)
            await self._db.serialise(session, "ledger")
            await usage.cut_at_midnight(session, now, self._pricebook)
        self._admit()
        self.passes += 1

    async def _stop_orphan(self, instance_id: str) -> None:
        log.warning("stopping orphan workload", extra={"instance_id": instance_id})
        try:
            await self._runtime.stop(instance_id, grace=self._stop_grace_s)
        except GatewayError as exc:  # the next resync tries again
            log.warning(
                "could not stop orphan workload: %s",
                exc.message,
                extra={"instance_id": instance_id},
            )


class StorageMetering:
    """Once a day, bills yesterday's stored user data (each volume's size, measured now). The
    bill is written under the store's ledger lock: another gateway may bill the same day, and
    the ledger takes it once."""

    def __init__(
        self,
        *,
        db: Database,
        volumes: Volumes,
        pricebook: PriceBook,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._volumes = volumes
        self._pricebook = pricebook
        self._clock = clock
        self.metered_day: datetime | None = None
        """The last day billed (midnight UTC); a failed step leaves it, so the next tries again."""

    async def step(self) -> None:
        today = self._clock().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        yesterday = today - timedelta(days=1)
        if self.metered_day == yesterday:
            return
        async with self._db.read() as session:
            volumes = list(await session.scalars(select(Volume)))
        measured = [await self._volumes.size(v.user_id, v.family) for v in volumes]
        sizes = [
            usage.StoredData(v.id, v.user_id, v.family, size / 2**30, since=v.created_at)
            for v, size in zip(volumes, measured, strict=True)
        ]
        async with self._db.write() as session:
            await self._db.serialise(session, "ledger")  # another gateway may bill it too
            await usage.record_storage(session, yesterday, sizes, self._pricebook)
        self.metered_day = yesterday


class QuotaCheck:
    """At most every ``check_s``: measures the data of the families that running instances use,
    and warns those instances (an event) when their family's usage rises to 90 % or to 100 % of
    its quota (see :mod:`aigc_gateway.storage.quota`). Nothing is stopped or deleted."""

    def __init__(
        self,
        *,
        db: Database,
        hub: EventHub,
        watch: QuotaWatch,
        check_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._hub = hub
        self._watch = watch
        self._check_s = check_s
        self._monotonic = monotonic
        self._checked = -float("inf")

    async def step(self) -> None:
        now = self._monotonic()
        if now - self._checked < self._check_s:
            return
        self._checked = now
        async with self._db.read() as session:
            running = [
                i
                for i in await repo.list_for(session, owner_id=None)
                if i.state == InstanceState.RUNNING
            ]
        risen = await self._watch.rises({(i.owner_id, i.family) for i in running})
        for inst in running:
            if (use := risen.get((inst.owner_id, inst.family))) is not None:
                async with self._db.write() as session:
                    ev = await repo.add_event(
                        session,
                        instance_id=inst.id,
                        kind="storage",
                        message=use.warning(),
                        data={"used_bytes": use.used_bytes, "quota_bytes": use.quota_bytes},
                    )
                self._hub.publish(EventRecord.of(ev))


class LeaseRenewal:
    """Renews this process's instance leases; each instance whose lease was lost (this process
    stalled past its expiry, and another took it over) is handed to ``lost``, so it is no longer
    driven here."""

    def __init__(self, cluster: Cluster, lost: Callable[[str], None]) -> None:
        self._cluster = cluster
        self._lost = lost

    async def step(self) -> None:
        for instance_id in await self._cluster.renew():
            self._lost(instance_id)


class TemplateReload:
    """Re-reads the template folder into the registry (the step of the template watch and of
    the SIGHUP reload)."""

    def __init__(self, registry: TemplateRegistry) -> None:
        self._registry = registry

    async def step(self) -> None:
        await self._registry.reload()


class TemplateWatch:
    """A trigger that returns at the next change in ``directory`` (not its subfolders). The
    watch stays open between calls, so a change made during a reload is not missed; when it
    fails (the folder is missing, say) it is closed and the next call opens a new one."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._changes: AsyncGenerator[object, None] | None = None

    async def __call__(self) -> None:
        from watchfiles import awatch  # a thread and an inotify handle: only when watching

        if self._changes is None:
            self._changes = awatch(self._directory, recursive=False)
        try:
            await anext(self._changes)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop watching (idempotent)."""
        changes, self._changes = self._changes, None
        if changes is not None:
            with contextlib.suppress(Exception):
                await changes.aclose()


class Poke:
    """A trigger that returns once :meth:`set` was called since it last returned (a signal
    handler sets it: cheap, and any number of signals during one step make one more step)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def __call__(self) -> None:
        await self._event.wait()
        self._event.clear()
