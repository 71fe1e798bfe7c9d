"""Users and API tokens in the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.auth.core.secrets import hash_password, hash_token, new_id, new_token
from aigc_gateway.errors import Conflict, NotFound, UserError
from aigc_gateway.store.tables import ApiToken, User

USER_NAME_HELP = "use 1-64 letters, digits, '.', '_', '-' or '@'"


def check_user_name(name: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
    if not 1 <= len(name) <= 64 or not set(name) <= allowed:
        raise UserError(f"invalid user name {name!r}: {USER_NAME_HELP}", code="invalid_user_name")
    return name


async def create_user(
    session: AsyncSession, *, name: str, password: str | None, is_admin: bool = False
) -> User:
    user = User(
        id=new_id(),
        name=check_user_name(name),
        display_name=name,
        is_admin=is_admin,
        disabled=False,
        password_hash=hash_password(password) if password else None,
        created_at=datetime.now(UTC),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} exists already", code="user_exists") from exc
    return user


async def user_by_name(session: AsyncSession, name: str) -> User:
    user = await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}", code="user_not_found")
    return user


async def count_users(session: AsyncSession) -> int:
    return len((await session.scalars(select(User.id))).all())


async def create_token(
    session: AsyncSession,
    *,
    user: User,
    name: str,
    scopes: str = "",
    expires_at: datetime | None = None,
) -> str:
    """Create a token for ``user``; return the secret, which is not stored."""
    secret = new_token()
    session.add(
        ApiToken(
            id=new_id(),
            user_id=user.id,
            name=name,
            token_hash=hash_token(secret),
            scopes=scopes,
            created_at=datetime.now(UTC),
            expires_at=expires_at,
        )
    )
    await session.flush()
    return secret


async def user_for_token(
    session: AsyncSession, secret: str, now: datetime
) -> tuple[User, str] | None:
    """The enabled user a live token belongs to and the token's scopes, or ``None``."""
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == hash_token(secret))
        )
    ).first()
    if row is None:
        return None
    token, user = row
    if token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
        return None
    return None if user.disabled else (user, token.scopes)


async def create_oidc_user(session: AsyncSession, *, identity: Any, at: datetime) -> User:
    """Create the user for a provider identity. The shown name is the provider's user name; if a
    different account already has it, a numbered variant is used (users are keyed by issuer and
    subject, never by name)."""
    base = "".join(c for c in identity.username if c.isalnum() or c in "._-@")[:60] or "user"
    name, n = base, 1
    while await session.scalar(select(User.id).where(User.name == name)) is not None:
        n += 1
        name = f"{base}-{n}"
    user = User(
        id=new_id(),
        name=name,
        display_name=identity.name,
        email=identity.email,
        is_admin=bool(identity.is_admin),
        disabled=False,
        password_hash=None,
        issuer=identity.issuer,
        subject=identity.subject,
        created_at=at,
    )
    session.add(user)
    await session.flush()
    return user
