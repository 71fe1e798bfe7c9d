"""Template revisions, volumes, instances and their events in the store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.auth.core.secrets import new_id
from aigc_gateway.domain.queries import InstanceFilter
from aigc_gateway.domain.states import DesiredState, InstanceState, Transition
from aigc_gateway.errors import Conflict, NotFound
from aigc_gateway.store.tables import (
    Event,
    Instance,
    Team,
    TeamMember,
    TemplateRevision,
    User,
    Volume,
)


def now() -> datetime:
    return datetime.now(UTC)


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def record_revision(
    session: AsyncSession,
    *,
    template_id: str,
    family: str,
    version: str,
    digest: str,
    source: str,
    spec: dict[str, Any],
) -> int:
    """Record this content of a template (idempotent) and return its revision id."""
    stmt = (
        _insert(session)(TemplateRevision)
        .values(
            template_id=template_id,
            family=family,
            version=version,
            digest=digest,
            source=source,
            spec=spec,
            loaded_at=now(),
        )
        .on_conflict_do_nothing(index_elements=["template_id", "digest"])
    )
    await session.execute(stmt)
    rev_id = await session.scalar(
        select(TemplateRevision.id).where(
            TemplateRevision.template_id == template_id, TemplateRevision.digest == digest
        )
    )
    assert rev_id is not None
    return rev_id


async def revision(session: AsyncSession, revision_id: int) -> TemplateRevision:
    rev = await session.get(TemplateRevision, revision_id)
    if rev is None:
        raise NotFound(f"template revision {revision_id} not found")
    return rev


async def volume_for(session: AsyncSession, *, user_id: str, family: str, path: str) -> Volume:
    """The user's volume for ``family``, created on first use (idempotent)."""
    stmt = (
        _insert(session)(Volume)
        .values(id=new_id(), user_id=user_id, family=family, path=path, created_at=now())
        .on_conflict_do_nothing(index_elements=["user_id", "family"])
    )
    await session.execute(stmt)
    vol = await session.scalar(
        select(Volume).where(Volume.user_id == user_id, Volume.family == family)
    )
    assert vol is not None
    return vol


async def lock_user(session: AsyncSession, user_id: str) -> User:
    """Lock the user's row for this transaction (PostgreSQL); SQLite writers are serialised."""
    user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise NotFound("user not found", code="user_not_found")
    return user


async def count_live(session: AsyncSession, owner_id: str) -> int:
    return (
        await session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(
                Instance.owner_id == owner_id,
                Instance.state != InstanceState.DELETED.value,
                Instance.desired_state != DesiredState.DELETED.value,
            )
        )
    ) or 0


async def names_in_use(session: AsyncSession, owner_id: str) -> set[str]:
    rows = await session.scalars(
        select(Instance.name).where(
            Instance.owner_id == owner_id, Instance.state != InstanceState.DELETED.value
        )
    )
    return set(rows.all())


async def by_request_id(session: AsyncSession, owner_id: str, request_id: str) -> Instance | None:
    return await session.scalar(
        select(Instance).where(Instance.owner_id == owner_id, Instance.request_id == request_id)
    )


async def get(session: AsyncSession, instance_id: str) -> Instance | None:
    return await session.get(Instance, instance_id)


async def list_for(
    session: AsyncSession, *, owner_id: str | None, include_deleted: bool = False
) -> Sequence[Instance]:
    stmt = select(Instance).order_by(Instance.created_at, Instance.id)
    if owner_id is not None:
        stmt = stmt.where(Instance.owner_id == owner_id)
    if not include_deleted:
        stmt = stmt.where(Instance.state != InstanceState.DELETED.value)
    return (await session.scalars(stmt)).all()


async def live_ids(session: AsyncSession) -> list[str]:
    rows = await session.scalars(
        select(Instance.id).where(Instance.state != InstanceState.DELETED.value)
    )
    return list(rows.all())


class InstanceChanges(TypedDict, total=False):
    """Columns of an instance a state move (or a runtime's answer) sets besides its state and
    reason; a key left out is left as it is, one given as ``None`` is cleared."""

    reason: str
    launched_generation: int
    template_revision_id: int
    started_at: datetime | None
    ready_at: datetime | None
    exit_code: int | None
    pid: int | None
    endpoint: str | None
    gpu_ids: list[str] | None
    gpu_memory_gib: float | None
    gpu_since: datetime | None
    placement: str | None
    queued_at: datetime | None
    queue_priority: int


async def apply_transition(
    session: AsyncSession, inst: Instance, move: Transition, **changes: Unpack[InstanceChanges]
) -> Event:
    """Move ``inst`` along ``move`` if it is still in ``move.source``; record the event.

    Raises :class:`Conflict` if another writer moved it first (optimistic check).
    """
    at = now()
    result = await session.execute(
        update(Instance)
        .where(Instance.id == inst.id, Instance.state == move.source.value)
        .values(state=move.target.value, reason=move.reason, updated_at=at, **changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"instance {inst.id} changed state concurrently", code="state_changed")
    return await add_event(
        session,
        instance_id=inst.id,
        kind="transition",
        message=move.reason,
        source_state=move.source.value,
        target_state=move.target.value,
        at=at,
    )


async def add_event(
    session: AsyncSession,
    *,
    instance_id: str,
    kind: str,
    message: str,
    source_state: str | None = None,
    target_state: str | None = None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> Event:
    ev = Event(
        instance_id=instance_id,
        at=at or now(),
        kind=kind,
        source_state=source_state,
        target_state=target_state,
        message=message,
        actor=actor,
        data=data or {},
    )
    session.add(ev)
    await session.flush()
    return ev


async def events_after(
    session: AsyncSession, instance_id: str, after_id: int = 0, limit: int = 500
) -> Sequence[Event]:
    return (
        await session.scalars(
            select(Event)
            .where(Event.instance_id == instance_id, Event.id > after_id)
            .order_by(Event.id)
            .limit(limit)
        )
    ).all()


def ensure_owner_may_create(count: int, limit: int) -> None:
    if count >= limit:
        raise Conflict(
            f"you have {count} instances, the most allowed is {limit}; "
            "delete one you no longer need, or ask an admin to raise your limit",
            code="instance_limit_reached",
        )


async def set_fields(
    session: AsyncSession, instance_id: str, **values: Unpack[InstanceChanges]
) -> None:
    await session.execute(
        update(Instance)
        .where(Instance.id == instance_id)
        .values(updated_at=now(), **values)
        .execution_options(synchronize_session=False)
    )


async def volume_in_use(session: AsyncSession, volume_id: str, *, but: str) -> bool:
    """Whether an instance other than ``but`` that is not deleted uses the volume."""
    found = await session.scalar(
        select(Instance.id)
        .where(
            Instance.volume_id == volume_id,
            Instance.id != but,
            Instance.state != InstanceState.DELETED.value,
        )
        .limit(1)
    )
    return found is not None


async def search(
    session: AsyncSession, f: InstanceFilter, *, offset: int, limit: int
) -> list[tuple[Instance, str]]:
    """Everyone's instances matching ``f`` with their owner's name, newest first (then by id,
    so paging is stable), ``limit`` from ``offset``."""
    stmt = select(Instance, User.name).join(User, User.id == Instance.owner_id)
    stmt = (
        stmt.where(Instance.state == f.state)
        if f.state
        else stmt.where(Instance.state != InstanceState.DELETED)
    )
    if f.user:
        stmt = stmt.where(User.name == f.user)
    if f.template:
        stmt = stmt.where(Instance.template_id == f.template)
    if f.team:
        members = select(TeamMember.user_id).join(Team, Team.id == TeamMember.team_id)
        stmt = stmt.where(Instance.owner_id.in_(members.where(Team.name == f.team)))
    stmt = stmt.order_by(Instance.created_at.desc(), Instance.id).offset(offset).limit(limit)
    return [(i, str(owner)) for i, owner in (await session.execute(stmt)).all()]


async def owner_names(session: AsyncSession, instance_ids: Sequence[str]) -> dict[str, str]:
    """Instance id → its owner's user name."""
    found = await session.execute(
        select(Instance.id, User.name)
        .join(User, User.id == Instance.owner_id)
        .where(Instance.id.in_(instance_ids))
    )
    return {str(i): str(name) for i, name in found.all()}


async def labels(
    session: AsyncSession, instance_ids: Iterable[str]
) -> dict[str, tuple[str, str, int | None]]:
    """Instance id → (its name, its owner's user name, its engine's pid), in one query."""
    found = await session.execute(
        select(Instance.id, Instance.name, User.name, Instance.pid)
        .join(User, User.id == Instance.owner_id)
        .where(Instance.id.in_(list(instance_ids)))
    )
    return {str(i): (str(name), str(owner), pid) for i, name, owner, pid in found.all()}


async def newest_event_ids(session: AsyncSession, instance_ids: Sequence[str]) -> dict[str, int]:
    """Instance id → the id of its newest event."""
    found = await session.execute(
        select(Event.instance_id, func.max(Event.id))
        .where(Event.instance_id.in_(instance_ids))
        .group_by(Event.instance_id)
    )
    return {str(i): int(n) for i, n in found.all()}


async def user_names(session: AsyncSession, user_ids: set[str]) -> dict[str, str]:
    """User id → user name."""
    found = await session.execute(select(User.id, User.name).where(User.id.in_(user_ids)))
    return {str(i): str(n) for i, n in found.all()}


async def list_by_ids(session: AsyncSession, ids: set[str]) -> Sequence[Instance]:
    if not ids:
        return []
    return (
        await session.scalars(
            select(Instance)
            .where(Instance.id.in_(ids), Instance.state != InstanceState.DELETED.value)
            .order_by(Instance.created_at, Instance.id)
        )
    ).all()


async def set_activity(session: AsyncSession, last: dict[str, float]) -> None:
    """Record the last proxied activity of several instances at once. Only ever later: each
    gateway process flushes what its own proxy saw, and one may flush an older mark after
    another flushed a newer one."""
    for instance_id, at in last.items():
        seen = datetime.fromtimestamp(at, UTC)
        await session.execute(
            update(Instance)
            .where(
                Instance.id == instance_id,
                or_(Instance.last_activity_at.is_(None), Instance.last_activity_at < seen),
            )
            .values(last_activity_at=seen)
            .execution_options(synchronize_session=False)
        )


async def pause_if_running(session: AsyncSession, instance_id: str, reason: str) -> Instance | None:
    """Set desired state to paused if the instance still wants to run (idempotent); record why."""
    inst = await session.get(Instance, instance_id, with_for_update=True, populate_existing=True)
    if inst is None or inst.desired_state != DesiredState.RUNNING.value:
        return None
    inst.desired_state = DesiredState.PAUSED.value
    inst.updated_at = now()
    await add_event(session, instance_id=instance_id, kind="action", message=reason)
    return inst
