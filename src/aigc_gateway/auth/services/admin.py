"""Administration of users and teams, and a user's own password."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.principal import Principal, Via, require_admin
from aigc_gateway.auth.core.secrets import hash_password, verify_password
from aigc_gateway.auth.services.accounts import now
from aigc_gateway.errors import Forbidden, NotFound, UserError
from aigc_gateway.store import access as acl
from aigc_gateway.store import sessions as sess
from aigc_gateway.store import users as users_repo
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Team, TeamMember, User

MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class UserChanges:
    disabled: bool | None = None
    is_admin: bool | None = None
    max_instances: int | None = None


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(
            f"the password must have at least {MIN_PASSWORD} characters", code="weak_password"
        )
    return password


class AdminService:
    def __init__(
        self, *, db: Database, on_access_change: Callable[[], None] = lambda: None
    ) -> None:
        self._db = db
        self._on_access_change = on_access_change

    async def list_users(self, who: Principal) -> Sequence[tuple[User, list[str]]]:
        require_admin(who)
        async with self._db.read() as session:
            users = (await session.scalars(select(User).order_by(User.name))).all()
            teams = {t.id: t.name for t in (await session.scalars(select(Team))).all()}
            return [
                (u, sorted(teams[t] for t in await acl.team_ids_of(session, u.id))) for u in users
            ]

    async def create_user(
        self, who: Principal, *, name: str, password: str | None, is_admin: bool, client: Client
    ) -> User:
        require_admin(who)
        async with self._db.write() as session:
            user = await users_repo.create_user(
                session,
                name=name,
                password=check_password(password) if password else None,
                is_admin=is_admin,
            )
            await self._audit(session, who, "user.create", client, user, {"is_admin": is_admin})
        return user

    async def update_user(
        self, who: Principal, user_id: str, changes: UserChanges, client: Client
    ) -> User:
        """Disable/enable (disabling signs the user out everywhere at once), make or unmake admin,
        set a per-user instance limit."""
        require_admin(who)
        async with self._db.write() as session:
            user = await self._user(session, user_id)
            detail: dict[str, Any] = {}
            if changes.disabled is not None and changes.disabled != user.disabled:
                if user.id == who.user_id and changes.disabled:
                    raise UserError(
                        "you cannot disable your own account", code="cannot_disable_self"
                    )
                user.disabled = changes.disabled
                detail["disabled"] = changes.disabled
                if changes.disabled:
                    detail["sessions_revoked"] = await sess.revoke_user_sessions(
                        session, user.id, now()
                    )
            if changes.is_admin is not None and changes.is_admin != user.is_admin:
                if user.id == who.user_id and not changes.is_admin:
                    raise UserError(
                        "you cannot remove your own admin role", code="cannot_demote_self"
                    )
                user.is_admin = changes.is_admin
                detail["is_admin"] = changes.is_admin
            if changes.max_instances is not None:
                user.max_instances = changes.max_instances
                detail["max_instances"] = changes.max_instances
            if detail:
                await self._audit(session, who, "user.update", client, user, detail)
        self._on_access_change()
        return user

    async def reset_password(
        self, who: Principal, user_id: str, password: str, client: Client
    ) -> None:
        require_admin(who)
        async with self._db.write() as session:
            user = await self._user(session, user_id)
            user.password_hash = hash_password(check_password(password))
            await sess.revoke_user_sessions(session, user.id, now())
            await self._audit(session, who, "user.password_reset", client, user, {})
        self._on_access_change()

    async def revoke_sessions(self, who: Principal, user_id: str, client: Client) -> int:
        require_admin(who)
        async with self._db.write() as session:
            user = await self._user(session, user_id)
            count = await sess.revoke_user_sessions(session, user.id, now())
            await self._audit(session, who, "session.revoke_all", client, user, {"count": count})
        self._on_access_change()
        return count

    async def change_own_password(
        self, who: Principal, current: str, new: str, client: Client
    ) -> None:
        if who.via is Via.TOKEN:
            raise Forbidden(
                "change your password from a signed-in browser session, not with a token"
            )
        async with self._db.write() as session:
            user = await self._user(session, who.user_id)
            if user.password_hash is None:
                raise UserError(
                    "this account signs in with single sign-on and has no password here"
                )
            if not verify_password(user.password_hash, current):
                raise UserError("the current password is wrong", code="bad_credentials")
            user.password_hash = hash_password(check_password(new))
            await self._audit(session, who, "user.password_change", client, user, {})

    # -- teams ----------------------------------------------------------------------------------

    async def search_users(
        self, who: Principal, q: str, *, page: int, page_size: int
    ) -> tuple[list[tuple[User, list[tuple[str, str]]]], bool]:
        """Users whose name or display name contains ``q`` (all for ``""``), by name, one page:
        each with its teams (id, name), and whether a next page exists. Administrators only."""
        require_admin(who)
        stmt = select(User).order_by(User.name)
        if q:
            stmt = stmt.where(
                or_(
                    User.name.contains(q, autoescape=True),
                    User.display_name.contains(q, autoescape=True),
                )
            )
        async with self._db.read() as session:
            found = (
                await session.scalars(stmt.offset(page * page_size).limit(page_size + 1))
            ).all()
            shown = list(found[:page_size])
            memberships = await session.execute(
                select(TeamMember.user_id, Team.id, Team.name)
                .join(Team, Team.id == TeamMember.team_id)
                .where(TeamMember.user_id.in_([u.id for u in shown]))
                .order_by(Team.name)
            )
            teams_of: dict[str, list[tuple[str, str]]] = {}
            for user_id, team_id, team_name in memberships.all():
                teams_of.setdefault(user_id, []).append((team_id, team_name))
        return [(u, teams_of.get(u.id, [])) for u in shown], len(found) > page_size

    async def list_teams(self, who: Principal) -> Sequence[tuple[Team, int]]:
        """Every team with its member count for an administrator; anyone else sees only the
        teams they belong to (the directory of teams is not theirs to browse)."""
        async with self._db.read() as session:
            teams = await acl.list_teams(session)
        if who.acts_as_admin:
            return teams
        return [(team, n) for team, n in teams if team.id in who.team_ids]

    async def create_team(self, who: Principal, name: str, client: Client) -> Team:
        require_admin(who)
        async with self._db.write() as session:
            team = await acl.ensure_team(session, name, now())
            await acl.audit(
                session,
                action="team.create",
                at=now(),
                actor_id=who.user_id,
                actor_name=who.name,
                target_type="team",
                target_id=team.id,
                ip=client.ip,
                user_agent=client.user_agent,
                detail={"name": name},
            )
        return team

    async def team_members(self, who: Principal, team_id: str) -> Sequence[tuple[User, str]]:
        require_admin(who)
        async with self._db.read() as session:
            await self._team(session, team_id)
            return await acl.members(session, team_id)

    async def set_member(
        self, who: Principal, team_id: str, user_id: str, member: bool, client: Client
    ) -> None:
        require_admin(who)
        async with self._db.write() as session:
            team = await self._team(session, team_id)
            user = await self._user(session, user_id)
            if await acl.set_membership(
                session, team_id=team.id, user_id=user.id, member=member, source="admin"
            ):
                await self._audit(
                    session,
                    who,
                    "team.member_add" if member else "team.member_remove",
                    client,
                    user,
                    {"team": team.name},
                )
        self._on_access_change()

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    async def _user(session: Any, user_id: str) -> User:
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        return user  # type: ignore[no-any-return]

    @staticmethod
    async def _team(session: Any, team_id: str) -> Team:
        team = await session.get(Team, team_id)
        if team is None:
            raise NotFound("no such team", code="team_not_found")
        return team  # type: ignore[no-any-return]

    @staticmethod
    async def _audit(
        session: Any,
        who: Principal,
        action: str,
        client: Client,
        user: User,
        detail: dict[str, Any],
    ) -> None:
        await acl.audit(
            session,
            action=action,
            at=now(),
            actor_id=who.user_id,
            actor_name=who.name,
            target_type="user",
            target_id=user.id,
            ip=client.ip,
            user_agent=client.user_agent,
            detail={"user": user.name, **detail},
        )
