"""Sign-in, sessions, API tokens and the audit trail, shared by the API, the pages and the CLI.

Every sign-in attempt, sign-out, token use (at most once an hour per token), token change and
admin action is written to the audit log in the same transaction as the change it records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.oidc import Identity
from aigc_gateway.auth.core.principal import (
    Principal,
    Scope,
    Via,
    parse_scopes,
    require_admin,
    require_scopes,
)
from aigc_gateway.auth.core.secrets import hash_token, verify_password
from aigc_gateway.errors import Forbidden, NotFound, UserError
from aigc_gateway.settings import Settings
from aigc_gateway.store import access as acl
from aigc_gateway.store import sessions as sess
from aigc_gateway.store import users as users_repo
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import ApiToken, Session, User

log = logging.getLogger(__name__)

TOKEN_USE_AUDIT_EVERY = timedelta(hours=1)
TOUCH_EVERY = timedelta(minutes=1)


class TooManyAttempts(UserError):
    status = 429
    code = "too_many_attempts"


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: User
    session: Session
    cookie: str
    """The session cookie's value (shown once; only its hash is stored)."""


def now() -> datetime:
    return datetime.now(UTC)


class AccountService:
    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        on_access_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._on_access_change = on_access_change
        self._idle = timedelta(minutes=settings.session_idle_minutes)
        self._max_age = timedelta(hours=settings.session_max_hours)

    # -- signing in -----------------------------------------------------------------------------

    async def has_password(self, who: Principal) -> bool:
        """Whether ``who`` signs in with a local password (SSO accounts have none)."""
        async with self._db.read() as session:
            found = await session.scalar(
                select(User.password_hash.is_not(None)).where(User.id == who.user_id)
            )
        return bool(found)

    async def login_local(self, username: str, password: str, client: Client) -> SignedIn:
        """Check a local account's password. Failures are counted per account and per address
        in the audit log itself, so limits hold across restarts and gateway replicas."""
        if not self._settings.local_login:
            raise Forbidden(
                "local sign-in is turned off; use single sign-on", code="local_login_off"
            )
        at = now()
        await self._check_rate(username, client, at)
        async with self._db.write() as session:
            user = await session.scalar(select(User).where(User.name == username))
            ok = (
                user is not None
                and user.password_hash is not None
                and verify_password(user.password_hash, password)
            )
            if not ok or user is None or user.disabled:
                reason = (
                    "account disabled" if ok and user is not None else "wrong user name or password"
                )
                await acl.audit(
                    session,
                    action="auth.login",
                    at=at,
                    actor_id=user.id if user else None,
                    actor_name=username[:128],
                    outcome="failure",
                    ip=client.ip,
                    user_agent=client.user_agent,
                    detail={"method": "local", "reason": reason},
                )
        if not ok or user is None:
            raise UserError("wrong user name or password", code="bad_credentials")
        if user.disabled:
            raise Forbidden(
                "this account is disabled; ask an administrator", code="account_disabled"
            )
        return await self._start_session(user, "local", client)

    async def _check_rate(self, username: str, client: Client, at: datetime) -> None:
        s = self._settings
        window = timedelta(minutes=s.login_failure_window_minutes)
        async with self._db.read() as session:
            per_account = await acl.count_failures(session, since=at - window, actor_name=username)
            per_address = (
                await acl.count_failures(session, since=at - window, ip=client.ip)
                if client.ip
                else 0
            )
        minutes = round(s.login_failure_window_minutes)
        if per_account >= s.login_max_failures_per_account:
            raise TooManyAttempts(
                f"too many failed sign-ins for this account; try again in {minutes} minutes "
                "or ask an administrator to reset the password"
            )
        if per_address >= s.login_max_failures_per_address:
            raise TooManyAttempts(
                f"too many failed sign-ins from your address; try again in {minutes} minutes"
            )

    async def login_oidc(self, identity: Identity, id_token: str, client: Client) -> SignedIn:
        """Find or create the user for (issuer, sub), sync teams and the admin flag from the
        provider's groups, and start a session — unless the gateway disabled the user."""
        at = now()
        async with self._db.write() as session:
            user = await session.scalar(
                select(User).where(User.issuer == identity.issuer, User.subject == identity.subject)
            )
            if user is None:
                user = await users_repo.create_oidc_user(session, identity=identity, at=at)
            user.email = identity.email
            user.display_name = identity.name
            if identity.is_admin is not None:
                user.is_admin = identity.is_admin
            if not user.disabled:
                await acl.sync_oidc_teams(session, user, identity.groups, at)
            else:
                await acl.audit(
                    session,
                    action="auth.login",
                    at=at,
                    actor_id=user.id,
                    actor_name=user.name,
                    outcome="failure",
                    ip=client.ip,
                    user_agent=client.user_agent,
                    detail={"method": "oidc", "reason": "account disabled"},
                )
        if user.disabled:
            raise Forbidden(
                "your account is disabled at this gateway; ask an administrator",
                code="account_disabled",
            )
        return await self._start_session(user, "oidc", client, id_token=id_token)

    async def _start_session(
        self, user: User, method: str, client: Client, *, id_token: str | None = None
    ) -> SignedIn:
        at = now()
        async with self._db.write() as session:
            row, cookie = await sess.create_session(
                session,
                user=user,
                method=method,
                now=at,
                max_age=self._max_age,
                ip=client.ip,
                user_agent=client.user_agent,
                id_token=id_token,
            )
            await acl.audit(
                session,
                action="auth.login",
                at=at,
                actor_id=user.id,
                actor_name=user.name,
                ip=client.ip,
                user_agent=client.user_agent,
                detail={"method": method},
            )
        log.info("signed in", extra={"user_id": user.id, "method": method})
        return SignedIn(user=user, session=row, cookie=cookie)

    async def logout(self, who: Principal, client: Client) -> str | None:
        """End the session (and with it every instance cookie it handed out); return the ID
        token to hint the provider's logout, if the session came from single sign-on."""
        if who.session_id is None:
            return None
        at = now()
        async with self._db.write() as session:
            row = await session.get(Session, who.session_id)
            await sess.revoke_session(session, who.session_id, at)
            await acl.audit(
                session,
                action="auth.logout",
                at=at,
                actor_id=who.user_id,
                actor_name=who.name,
                ip=client.ip,
                user_agent=client.user_agent,
            )
        self._on_access_change()
        return row.id_token if row is not None else None

    # -- who is asking --------------------------------------------------------------------------

    async def principal_for_session(self, cookie: str) -> Principal | None:
        at = now()
        async with self._db.read() as session:
            found = await sess.live_session(session, cookie, now=at, idle=self._idle)
            if found is None:
                return None
            row, user = found
            teams = await acl.team_ids_of(session, user.id)
        if at - row.last_seen_at > TOUCH_EVERY:
            async with self._db.write() as session:
                await sess.touch(session, row.id, at)
        return Principal(
            user_id=user.id,
            name=user.name,
            is_admin=user.is_admin,
            team_ids=teams,
            via=Via.SESSION,
            session_id=row.id,
            csrf_token=row.csrf_token,
        )

    async def principal_for_token(self, secret: str, client: Client) -> Principal | None:
        at = now()
        async with self._db.read() as session:
            found = await users_repo.user_for_token(session, secret, at)
            if found is None:
                return None
            user, scopes = found
            teams = await acl.team_ids_of(session, user.id)
            token = await session.scalar(
                select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
            )
        assert token is not None
        if token.last_used_at is None or at - token.last_used_at > TOKEN_USE_AUDIT_EVERY:
            async with self._db.write() as session:
                fresh = await session.get(ApiToken, token.id)
                if fresh is not None:
                    fresh.last_used_at = at
                await acl.audit(
                    session,
                    action="token.use",
                    at=at,
                    actor_id=user.id,
                    actor_name=user.name,
                    target_type="token",
                    target_id=token.id,
                    ip=client.ip,
                    user_agent=client.user_agent,
                    detail={"name": token.name},
                )
        return Principal(
            user_id=user.id,
            name=user.name,
            is_admin=user.is_admin,
            scopes=parse_scopes(scopes),
            team_ids=teams,
            via=Via.TOKEN,
        )

    # -- tokens ---------------------------------------------------------------------------------

    async def list_tokens(self, who: Principal) -> list[ApiToken]:
        async with self._db.read() as session:
            rows = await session.scalars(
                select(ApiToken)
                .where(ApiToken.user_id == who.user_id, ApiToken.revoked_at.is_(None))
                .order_by(ApiToken.created_at)
            )
            return list(rows.all())

    async def create_token(
        self,
        who: Principal,
        *,
        name: str,
        scopes: list[Scope],
        expires_in_days: int | None,
        client: Client,
    ) -> tuple[ApiToken, str]:
        if who.via is Via.TOKEN and not who.may_write:
            raise Forbidden("a read-only token cannot create tokens", code="token_scope")
        require_scopes(who, frozenset(scopes))
        at = now()
        expires = at + timedelta(days=expires_in_days) if expires_in_days else None
        async with self._db.write() as session:
            user = await session.get(User, who.user_id)
            assert user is not None
            secret = await users_repo.create_token(
                session, user=user, name=name, scopes=",".join(sorted(scopes)), expires_at=expires
            )
            token = await session.scalar(
                select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
            )
            assert token is not None
            await self._audit(
                session, who, "token.create", client, "token", token.id, {"name": name}
            )
        return token, secret

    async def revoke_token(self, who: Principal, token_id: str, client: Client) -> None:
        async with self._db.write() as session:
            token = await session.get(ApiToken, token_id)
            if token is None or (token.user_id != who.user_id and not who.acts_as_admin):
                raise NotFound("no such token", code="token_not_found")
            if token.revoked_at is None:
                token.revoked_at = now()
                await self._audit(
                    session, who, "token.revoke", client, "token", token.id, {"name": token.name}
                )
        self._on_access_change()  # what the token opened (an event stream) ends with it

    # -- sessions -------------------------------------------------------------------------------

    async def list_sessions(self, who: Principal) -> list[Session]:
        async with self._db.read() as session:
            rows = await sess.user_sessions(session, who.user_id, now())
        return [r for r in rows if sess.session_is_live(r, now=now(), idle=self._idle)]

    async def revoke_own_session(self, who: Principal, session_id: str, client: Client) -> None:
        async with self._db.write() as session:
            row = await session.get(Session, session_id)
            if row is None or row.user_id != who.user_id:
                raise NotFound("no such session", code="session_not_found")
            await sess.revoke_session(session, session_id, now())
            await self._audit(session, who, "session.revoke", client, "session", session_id, {})
        self._on_access_change()

    # -- audit ----------------------------------------------------------------------------------

    async def _audit(
        self,
        session: Any,
        who: Principal,
        action: str,
        client: Client,
        target_type: str | None,
        target_id: str | None,
        detail: dict[str, Any],
    ) -> None:
        await acl.audit_by(
            session, who, client, action, target_type=target_type, target_id=target_id,
            detail=detail,
        )  # fmt: skip

    async def list_audit(
        self,
        who: Principal,
        *,
        action: str | None,
        actor: str | None,
        before_id: int | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        require_admin(who)
        async with self._db.read() as session:
            rows = await acl.list_audit(
                session, action=action, actor=actor, before_id=before_id, limit=limit
            )
        return [
            {
                "id": r.id,
                "at": r.at.isoformat(),
                "actor_id": r.actor_id,
                "actor": r.actor_name,
                "action": r.action,
                "outcome": r.outcome,
                "target_type": r.target_type,
                "target_id": r.target_id,
                "ip": r.ip,
                "user_agent": r.user_agent,
                "detail": r.detail,
            }
            for r in rows
        ]

    async def record_failure(self, *, method: str, reason: str, client: Client) -> None:
        """A sign-in refused before any user was known (bad ID token, provider error)."""
        async with self._db.write() as session:
            await acl.audit(
                session,
                action="auth.login",
                at=now(),
                outcome="failure",
                ip=client.ip,
                user_agent=client.user_agent,
                detail={"method": method, "reason": reason},
            )
