"""This gateway process among the others that share its database: its leases and its notices.

Any number of gateway processes may serve one PostgreSQL. Each serves the API, the pages and the
proxy for every instance, but only one *drives* an instance at a time (starts, stops, moves its
state): the holder of its lease (:mod:`aigc_gateway.store.leases`). The controller takes a lease
before reconciling, renews the ones it holds every third of their lifetime, fences every state
move with it (a process whose lease passed to another can no longer write the instance), and
gives them all back when it closes; the leases of a process that died expire, and another
process's resync takes them over.

What one process changes that the others keep in memory travels as notices
(:mod:`aigc_gateway.store.notices`):

- ``route <id>``: the instance's route changed; re-read it from the store.
- ``access``: shares, sessions, roles or tokens changed; drop the cached access decisions (and
  re-decide open WebSockets).
- ``kick <id>``: reconcile this instance now (sent when the kicking process does not hold it).
- ``gpus``: GPUs were freed; re-read the allocations and admit the waiting.

On the embedded SQLite there is one process: the leases still apply (to itself), notices carry
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.errors import GatewayError
from aigc_gateway.store import leases
from aigc_gateway.store.db import Database
from aigc_gateway.store.notices import LocalNotices, Notice, Notices

log = logging.getLogger(__name__)

__all__ = ["Cluster", "NotHolder"]

Handler = Callable[[str], object]


class NotHolder(GatewayError):
    """Another gateway process drives this instance (or took it over): this one must not move
    it. Not a failure: the actor that meets it ends; the holder does the work."""

    status = 409
    code = "not_holder"


class Cluster:
    """The leases this process holds and the notices it sends and hears."""

    def __init__(
        self,
        db: Database,
        *,
        lease_ttl_s: float,
        notices: Notices | None = None,
        holder: str | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = db
        self.ttl = timedelta(seconds=lease_ttl_s)
        self.holder = holder or leases.new_holder()
        """This process's name in the lease table."""
        self.notices: Notices = notices if notices is not None else LocalNotices()
        # Leases are compared across processes: real wall time, never a test's ledger clock.
        self._now = wall_clock or (lambda: datetime.now(UTC))
        self.held: set[str] = set()
        """Instances whose lease this process holds (as far as it knows: fencing has the last
        word)."""
        self._handlers: dict[str, Handler] = {}
        self._reconnected: list[Callable[[], Awaitable[None]]] = []

    @property
    def shared(self) -> bool:
        """Whether other processes may share the store (notices travel between them)."""
        return not isinstance(self.notices, LocalNotices)

    @property
    def renew_every_s(self) -> float:
        return self.ttl.total_seconds() / 3

    # -- leases ---------------------------------------------------------------------------------

    async def take(self, instance_id: str) -> bool:
        """Hold ``instance_id``'s lease (taken, renewed, or taken over once expired); False when
        another live process holds it."""
        async with self._db.write() as session:
            mine = await leases.take(session, instance_id, self.holder, self._now(), self.ttl)
        if mine:
            self.held.add(instance_id)
        else:
            self.held.discard(instance_id)
        return mine

    async def fence(self, session: AsyncSession, instance_id: str) -> None:
        """In ``session``'s write transaction: renew this process's lease on ``instance_id``,
        locking it until the transaction ends, or raise :class:`NotHolder` (which rolls the
        transaction back) when the lease is not this process's any more."""
        if not await leases.fence(session, instance_id, self.holder, self._now(), self.ttl):
            self.held.discard(instance_id)
            raise NotHolder(f"instance {instance_id} is driven by another gateway process")

    async def renew(self) -> set[str]:
        """Renew every lease held; return those found lost (expired or taken over)."""
        if not self.held:
            return set()
        asked = set(self.held)
        async with self._db.write() as session:
            kept = await leases.renew_all(session, self.holder, asked, self._now(), self.ttl)
        lost = asked - kept
        self.held -= lost
        for instance_id in lost:
            log.warning("lease lost to another gateway", extra={"instance_id": instance_id})
        return lost

    async def release(self, instance_id: str) -> None:
        """Give the lease back (the instance is gone)."""
        self.held.discard(instance_id)
        async with self._db.write() as session:
            await leases.release(session, instance_id, self.holder)

    async def release_all(self) -> None:
        """Give every lease back, so the other processes take over at once (a clean shutdown)."""
        self.held.clear()
        async with self._db.write() as session:
            await leases.release_all(session, self.holder)

    async def drivable(self, instance_ids: Iterable[str]) -> list[str]:
        """Those of ``instance_ids`` this process holds or nobody holds unexpired (what its
        resync reconciles: the rest is another live process's)."""
        async with self._db.read() as session:
            taken = await leases.holders(session, self._now())
        return [i for i in instance_ids if taken.get(i, self.holder) == self.holder]

    async def driven_elsewhere(self, session: AsyncSession) -> set[str]:
        """In ``session``: the instances whose unexpired lease another process holds."""
        taken = await leases.holders(session, self._now())
        return {i for i, holder in taken.items() if holder != self.holder}

    # -- notices --------------------------------------------------------------------------------

    def announce(self, topic: str, subject: str = "") -> None:
        """Tell the other processes (see the module's list of topics)."""
        self.notices.announce(topic, subject)

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler(subject)`` for each ``topic`` notice another process sends."""
        self._handlers[topic] = handler

    def on_reconnect(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await ``refresh`` whenever the notice channel is (re)opened (notices may have been
        missed while it was down)."""
        self._reconnected.append(refresh)

    async def listen(self) -> None:
        """Hear the other processes until cancelled."""
        await self.notices.run(self._deliver, self._refresh)

    def _deliver(self, notice: Notice) -> None:
        handler = self._handlers.get(notice.topic)
        if handler is None:
            log.debug("notice of unknown topic %r ignored", notice.topic)
            return
        try:
            handler(notice.subject)
        except Exception:  # one bad notice must not end the channel
            log.exception("handling notice %s %s failed", notice.topic, notice.subject)

    async def _refresh(self) -> None:
        for refresh in self._reconnected:
            await refresh()
