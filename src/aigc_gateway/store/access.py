"""Teams, instance shares and the audit log in the store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.auth.core.secrets import new_id
from aigc_gateway.errors import Conflict, NotFound, UserError
from aigc_gateway.store.tables import AuditEvent, InstanceShare, Team, TeamMember, User


async def team_ids_of(session: AsyncSession, user_id: str) -> frozenset[str]:
    rows = await session.scalars(select(TeamMember.team_id).where(TeamMember.user_id == user_id))
    return frozenset(rows.all())


async def team_by_name(session: AsyncSession, name: str) -> Team | None:
    return await session.scalar(select(Team).where(Team.name == name))


async def ensure_team(session: AsyncSession, name: str, now: datetime) -> Team:
    if not 1 <= len(name) <= 128:
        raise UserError(
            f"invalid team name {name!r}: use 1-128 characters", code="invalid_team_name"
        )
    team = await team_by_name(session, name)
    if team is None:
        team = Team(id=new_id(), name=name, created_at=now)
        session.add(team)
        await session.flush()
    return team


async def list_teams(session: AsyncSession) -> Sequence[tuple[Team, int]]:
    count = func.count(TeamMember.user_id)
    rows = await session.execute(
        select(Team, count)
        .outerjoin(TeamMember, TeamMember.team_id == Team.id)
        .group_by(Team.id)
        .order_by(Team.name)
    )
    return [(team, int(n)) for team, n in rows.all()]


async def members(session: AsyncSession, team_id: str) -> Sequence[tuple[User, str]]:
    rows = await session.execute(
        select(User, TeamMember.source)
        .join(TeamMember, TeamMember.user_id == User.id)
        .where(TeamMember.team_id == team_id)
        .order_by(User.name)
    )
    return [(u, src) for u, src in rows.all()]


async def set_membership(
    session: AsyncSession, *, team_id: str, user_id: str, member: bool, source: str
) -> bool:
    """Add or remove a membership; return whether anything changed (idempotent)."""
    existing = await session.get(TeamMember, (team_id, user_id))
    if member and existing is None:
        session.add(TeamMember(team_id=team_id, user_id=user_id, source=source))
        await session.flush()
        return True
    if not member and existing is not None:
        await session.delete(existing)
        await session.flush()
        return True
    return False


async def sync_oidc_teams(
    session: AsyncSession, user: User, groups: Sequence[str], now: datetime
) -> None:
    """Make the user's provider-sourced memberships match ``groups``; memberships an admin set by
    hand are left alone."""
    wanted = {(await ensure_team(session, g, now)).id for g in groups}
    current = await session.scalars(
        select(TeamMember).where(TeamMember.user_id == user.id, TeamMember.source == "oidc")
    )
    for row in current.all():
        if row.team_id not in wanted:
            await session.delete(row)
    have = await team_ids_of(session, user.id)
    for team_id in wanted - have:
        session.add(TeamMember(team_id=team_id, user_id=user.id, source="oidc"))
    await session.flush()


async def is_shared_with(
    session: AsyncSession, instance_id: str, user_id: str, team_ids: frozenset[str]
) -> bool:
    clause = InstanceShare.user_id == user_id
    if team_ids:
        clause = or_(clause, InstanceShare.team_id.in_(team_ids))
    found = await session.scalar(
        select(InstanceShare.id).where(InstanceShare.instance_id == instance_id, clause).limit(1)
    )
    return found is not None


async def shared_instance_ids(
    session: AsyncSession, user_id: str, team_ids: frozenset[str]
) -> set[str]:
    clause = InstanceShare.user_id == user_id
    if team_ids:
        clause = or_(clause, InstanceShare.team_id.in_(team_ids))
    return set((await session.scalars(select(InstanceShare.instance_id).where(clause))).all())


async def add_share(
    session: AsyncSession,
    *,
    instance_id: str,
    user_id: str | None,
    team_id: str | None,
    by: str,
    now: datetime,
) -> InstanceShare:
    existing = await session.scalar(
        select(InstanceShare).where(
            InstanceShare.instance_id == instance_id,
            InstanceShare.user_id.is_(None)
            if user_id is None
            else InstanceShare.user_id == user_id,
            InstanceShare.team_id.is_(None)
            if team_id is None
            else InstanceShare.team_id == team_id,
        )
    )
    if existing is not None:
        return existing  # sharing twice is not an error
    share = InstanceShare(
        id=new_id(),
        instance_id=instance_id,
        user_id=user_id,
        team_id=team_id,
        created_by=by,
        created_at=now,
    )
    session.add(share)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("already shared", code="already_shared") from exc
    return share


async def shares_of(session: AsyncSession, instance_id: str) -> Sequence[tuple[InstanceShare, str]]:
    """Shares with a display name for the target (user or team)."""
    rows = await session.execute(
        select(InstanceShare, func.coalesce(User.name, Team.name))
        .outerjoin(User, User.id == InstanceShare.user_id)
        .outerjoin(Team, Team.id == InstanceShare.team_id)
        .where(InstanceShare.instance_id == instance_id)
        .order_by(InstanceShare.created_at)
    )
    return [(share, str(name)) for share, name in rows.all()]


async def shares_of_instances(
    session: AsyncSession, instance_ids: Sequence[str]
) -> dict[str, list[tuple[str, str, str]]]:
    """Instance id → its shares, oldest first, as (share id, user or team name, ``user`` or
    ``team``), for many instances in one query."""
    rows = await session.execute(
        select(InstanceShare.id, InstanceShare.instance_id, User.name, Team.name)
        .outerjoin(User, User.id == InstanceShare.user_id)
        .outerjoin(Team, Team.id == InstanceShare.team_id)
        .where(InstanceShare.instance_id.in_(instance_ids))
        .order_by(InstanceShare.created_at)
    )
    found: dict[str, list[tuple[str, str, str]]] = {}
    for share_id, instance_id, user_name, team_name in rows.all():
        kind, target = ("user", user_name) if user_name else ("team", team_name)
        found.setdefault(str(instance_id), []).append((str(share_id), str(target), kind))
    return found


async def remove_share(session: AsyncSession, instance_id: str, share_id: str) -> None:
    result = await session.execute(
        delete(InstanceShare).where(
            InstanceShare.id == share_id, InstanceShare.instance_id == instance_id
        )
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound("no such share", code="share_not_found")


async def audit_by(
    session: AsyncSession,
    who: Principal,
    client: Client,
    action: str,
    *,
    target_type: str | None = None,
    target_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit entry for ``who``'s successful ``action``, in ``session``'s transaction (so
    the entry exists exactly when the change does)."""
    await audit(
        session,
        action=action,
        at=datetime.now(UTC),
        actor_id=who.user_id,
        actor_name=who.name,
        target_type=target_type,
        target_id=target_id,
        ip=client.ip,
        user_agent=client.user_agent,
        detail=detail,
    )


async def audit(
    session: AsyncSession,
    *,
    action: str,
    at: datetime,
    actor_id: str | None = None,
    actor_name: str | None = None,
    outcome: str = "success",
    target_type: str | None = None,
    target_id: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            at=at,
            actor_id=actor_id,
            actor_name=actor_name,
            action=action,
            outcome=outcome,
            target_type=target_type,
            target_id=target_id,
            ip=ip,
            user_agent=(user_agent or "")[:256] or None,
            detail=detail or {},
        )
    )
    await session.flush()


async def count_failures(
    session: AsyncSession, *, since: datetime, actor_name: str | None = None, ip: str | None = None
) -> int:
    stmt = (
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.action == "auth.login",
            AuditEvent.outcome == "failure",
            AuditEvent.at > since,
        )
    )
    if actor_name is not None:
        stmt = stmt.where(AuditEvent.actor_name == actor_name)
    if ip is not None:
        stmt = stmt.where(AuditEvent.ip == ip)
    return int(await session.scalar(stmt) or 0)


async def list_audit(
    session: AsyncSession,
    *,
    action: str | None,
    actor: str | None,
    before_id: int | None,
    limit: int,
) -> Sequence[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action:
        stmt = stmt.where(AuditEvent.action.startswith(action))
    if actor:
        stmt = stmt.where(AuditEvent.actor_name == actor)
    if before_id:
        stmt = stmt.where(AuditEvent.id < before_id)
    return (await session.scalars(stmt)).all()
