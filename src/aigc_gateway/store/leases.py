"""Instance leases in the store: which gateway process drives which instance, until when.

Every statement here is one atomic row operation, correct with any number of processes on one
database (PostgreSQL row locks; SQLite's single writer):

- :func:`take` inserts a lease, renews one the caller holds, or takes over one that expired, in
  one upsert whose ``WHERE`` decides; a live lease of another holder is left alone.
- :func:`fence` renews a lease the caller holds *inside the caller's write transaction*. The
  update locks the row until that transaction commits, so another process's takeover waits for
  it and then sees the lease renewed: a transaction that fenced cannot commit after its lease
  passed to someone else (a stale holder's write fails instead of racing the new holder's).

Times are the callers' wall clocks (aware UTC); hosts sharing a database keep them in step with
NTP, far finer than a lease's lifetime.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.store.tables import InstanceLease

__all__ = ["fence", "holders", "new_holder", "release", "release_all", "renew_all", "take"]


def new_holder() -> str:
    """A name for this process that no other process, here or on another host, has had:
    ``host:pid:random`` (the random part tells a restarted process with a reused pid apart)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


async def take(
    session: AsyncSession, instance_id: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """Make ``holder`` the holder of ``instance_id``'s lease until ``now + ttl`` if nobody else
    holds it unexpired; return whether ``holder`` holds it now."""
    values = {"instance_id": instance_id, "holder": holder, "expires_at": now + ttl}
    update_to = {"holder": holder, "expires_at": now + ttl}
    free = (InstanceLease.holder == holder) | (InstanceLease.expires_at <= now)
    key = [InstanceLease.instance_id]
    taken = InstanceLease.instance_id
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(InstanceLease).values(values)
        stmt = pg.on_conflict_do_update(index_elements=key, set_=update_to, where=free)
        result = await session.execute(stmt.returning(taken))
    else:
        lite = sqlite.insert(InstanceLease).values(values)
        upsert = lite.on_conflict_do_update(index_elements=key, set_=update_to, where=free)
        result = await session.execute(upsert.returning(taken))
    return result.first() is not None


async def fence(
    session: AsyncSession, instance_id: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """Renew ``holder``'s unexpired lease on ``instance_id`` in the caller's transaction (and
    lock it until that commits); False when ``holder`` does not hold it (any more)."""
    result = await session.execute(
        update(InstanceLease)
        .where(
            InstanceLease.instance_id == instance_id,
            InstanceLease.holder == holder,
            InstanceLease.expires_at > now,
        )
        .values(expires_at=now + ttl)
        .returning(InstanceLease.instance_id)
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


async def renew_all(
    session: AsyncSession, holder: str, instance_ids: Iterable[str], now: datetime, ttl: timedelta
) -> set[str]:
    """Renew those of ``instance_ids`` whose lease ``holder`` still holds unexpired; return
    them (the others are lost: expired, or taken over)."""
    ids = list(instance_ids)
    if not ids:
        return set()
    result = await session.execute(
        update(InstanceLease)
        .where(
            InstanceLease.instance_id.in_(ids),
            InstanceLease.holder == holder,
            InstanceLease.expires_at > now,
        )
        .values(expires_at=now + ttl)
        .returning(InstanceLease.instance_id)
        .execution_options(synchronize_session=False)
    )
    return set(result.scalars())


async def release(session: AsyncSession, instance_id: str, holder: str) -> None:
    """Give up ``holder``'s lease on ``instance_id`` (nothing if it holds none)."""
    await session.execute(
        delete(InstanceLease).where(
            InstanceLease.instance_id == instance_id, InstanceLease.holder == holder
        )
    )


async def release_all(session: AsyncSession, holder: str) -> None:
    """Give up every lease of ``holder`` (a gateway shutting down: others take over at once)."""
    await session.execute(delete(InstanceLease).where(InstanceLease.holder == holder))


async def holders(session: AsyncSession, now: datetime) -> dict[str, str]:
    """instance id → holder, for the unexpired leases."""
    rows = await session.execute(
        select(InstanceLease.instance_id, InstanceLease.holder).where(
            InstanceLease.expires_at > now
        )
    )
    return {instance_id: holder for instance_id, holder in rows.all()}
