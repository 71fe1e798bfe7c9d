"""Browser sessions, one-time handover tokens and instance cookies in the store."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.auth.core.secrets import hash_token, new_id
from aigc_gateway.store.tables import HandoverToken, InstanceSession, Session, User


async def create_session(
    session: AsyncSession,
    *,
    user: User,
    method: str,
    now: datetime,
    max_age: timedelta,
    ip: str | None,
    user_agent: str | None,
    id_token: str | None = None,
) -> tuple[Session, str]:
    """Create a session; return it and the cookie secret (only its hash is stored)."""
    secret = secrets.token_urlsafe(32)
    row = Session(
        id=new_id(),
        secret_hash=hash_token(secret),
        user_id=user.id,
        auth_method=method,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + max_age,
        ip=ip,
        user_agent=(user_agent or "")[:256] or None,
        id_token=id_token,
    )
    session.add(row)
    await session.flush()
    return row, secret


async def live_session(
    session: AsyncSession, secret: str, *, now: datetime, idle: timedelta
) -> tuple[Session, User] | None:
    """The session for a cookie secret if it is neither revoked, expired nor idle too long,
    and its user is enabled."""
    row = (
        await session.execute(
            select(Session, User)
            .join(User, User.id == Session.user_id)
            .where(Session.secret_hash == hash_token(secret))
        )
    ).first()
    if row is None:
        return None
    sess, user = row
    if not session_is_live(sess, now=now, idle=idle) or user.disabled:
        return None
    return sess, user


def session_is_live(sess: Session, *, now: datetime, idle: timedelta) -> bool:
    return sess.revoked_at is None and sess.expires_at > now and sess.last_seen_at + idle > now


async def touch(session: AsyncSession, session_id: str, now: datetime) -> None:
    await session.execute(
        update(Session)
        .where(Session.id == session_id)
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )


async def revoke_session(session: AsyncSession, session_id: str, now: datetime) -> None:
    await session.execute(
        update(Session)
        .where(Session.id == session_id, Session.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


async def revoke_user_sessions(session: AsyncSession, user_id: str, now: datetime) -> int:
    result = await session.execute(
        update(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def user_sessions(session: AsyncSession, user_id: str, now: datetime) -> list[Session]:
    rows = await session.scalars(
        select(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None), Session.expires_at > now)
        .order_by(Session.created_at.desc())
    )
    return list(rows.all())


async def create_handover(
    session: AsyncSession, *, session_id: str, instance_id: str, now: datetime
) -> str:
    secret = secrets.token_urlsafe(32)
    session.add(
        HandoverToken(
            id=new_id(),
            secret_hash=hash_token(secret),
            session_id=session_id,
            instance_id=instance_id,
            expires_at=now + timedelta(seconds=60),
        )
    )
    await session.flush()
    return secret


async def redeem_handover(
    session: AsyncSession, secret: str, *, now: datetime
) -> HandoverToken | None:
    """Use a handover token once: the returned row is marked used; a second use gets None."""
    token = await session.scalar(
        select(HandoverToken)
        .where(HandoverToken.secret_hash == hash_token(secret))
        .with_for_update()
    )
    if token is None or token.used_at is not None or token.expires_at <= now:
        return None
    result = await session.execute(
        update(HandoverToken)
        .where(HandoverToken.id == token.id, HandoverToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return token if result.rowcount == 1 else None  # type: ignore[attr-defined]


async def create_instance_session(
    session: AsyncSession, *, session_id: str, instance_id: str, now: datetime
) -> str:
    secret = secrets.token_urlsafe(32)
    session.add(
        InstanceSession(
            id=new_id(),
            secret_hash=hash_token(secret),
            session_id=session_id,
            instance_id=instance_id,
            created_at=now,
        )
    )
    await session.flush()
    return secret


async def instance_cookie_owner(
    session: AsyncSession, secret: str
) -> tuple[InstanceSession, Session, User] | None:
    row = (
        await session.execute(
            select(InstanceSession, Session, User)
            .join(Session, Session.id == InstanceSession.session_id)
            .join(User, User.id == Session.user_id)
            .where(InstanceSession.secret_hash == hash_token(secret))
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])
