"""Reaching an engine on its own host: the one-time hand-over that gives the browser an
instance-scoped cookie, and the forward-auth decision nginx/Traefik ask for on each request.

The gateway's session cookie is host-only on the gateway and never reaches an instance host. An
instance cookie works on exactly one instance's host, and only while the session that made it is
alive and its user may still use the instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.principal import Access, Principal, Via, authorize_instance
from aigc_gateway.auth.services.access_cache import Allowed, Decision, Refused
from aigc_gateway.auth.services.accounts import now
from aigc_gateway.domain.hosts import instance_slug, instance_url_target, safe_next
from aigc_gateway.domain.states import InstanceState
from aigc_gateway.errors import Forbidden, NotFound, UserError
from aigc_gateway.settings import Settings
from aigc_gateway.store import access as acl
from aigc_gateway.store import sessions as sess
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Instance, Session

INSTANCE_COOKIE = "aigc_instance"


@dataclass(frozen=True, slots=True)
class ForwardDecision:
    status: int
    """200 allow, 401 sign in first, 403 not allowed (or not an instance host)."""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""


async def _instance_by_slug(session: object, slug: str) -> Instance | None:
    return await session.scalar(  # type: ignore[attr-defined, no-any-return]
        select(Instance).where(Instance.slug == slug, Instance.state != InstanceState.DELETED.value)
    )


class InstanceAccess:
    def __init__(self, *, db: Database, settings: Settings) -> None:
        self._db = db
        self._apps_domain = settings.apps_domain
        self._idle = timedelta(minutes=settings.session_idle_minutes)

    @property
    def idle(self) -> timedelta:
        return self._idle

    async def start_handover(self, who: Principal, rd: str, client: Client) -> str:
        """The URL that carries a signed-in browser to the instance at ``rd`` (a URL on an
        instance host; anything else is refused, so this is no open redirect)."""
        target = instance_url_target(rd, self._apps_domain)
        if target is None:
            raise UserError(
                "rd must be the address of an instance on this gateway", code="bad_redirect"
            )
        if who.via is not Via.SESSION or who.session_id is None:
            raise Forbidden("opening an instance needs a signed-in browser session")
        scheme, host, path = target
        slug = instance_slug(host, self._apps_domain)
        assert slug is not None
        async with self._db.write() as session:
            inst = await _instance_by_slug(session, slug)
            if inst is None:
                raise NotFound("no such instance", code="instance_not_found")
            shared = await acl.is_shared_with(session, inst.id, who.user_id, who.team_ids)
            authorize_instance(who, inst.owner_id, Access.USE, shared=shared)
            token = await sess.create_handover(
                session, session_id=who.session_id, instance_id=inst.id, now=now()
            )
            await acl.audit(
                session,
                action="instance.open",
                at=now(),
                actor_id=who.user_id,
                actor_name=who.name,
                target_type="instance",
                target_id=inst.id,
                ip=client.ip,
                user_agent=client.user_agent,
            )
        return f"{scheme}://{host}/_aigc/handover?token={quote(token)}&next={quote(path, safe='/')}"

    async def redeem_handover(
        self, host: str, token: str, next_path: str | None
    ) -> tuple[str, str]:
        """Trade a hand-over token (once) for an instance cookie on ``host``; return the cookie
        value and where to go next (a path on the same host)."""
        slug = instance_slug(host, self._apps_domain)
        if slug is None:
            raise NotFound("not an instance address", code="not_an_instance")
        at = now()
        async with self._db.write() as session:
            handover = await sess.redeem_handover(session, token, now=at)
            if handover is None:
                raise Forbidden(
                    "this sign-in link was already used or has expired; open the instance again",
                    code="handover_invalid",
                )
            inst = await session.get(Instance, handover.instance_id)
            if inst is None or inst.slug != slug:
                raise Forbidden(
                    "this sign-in link is for another instance", code="handover_invalid"
                )
            parent = await session.get(Session, handover.session_id)
            if parent is None or not sess.session_is_live(parent, now=at, idle=self._idle):
                raise Forbidden("your session has ended; sign in again", code="handover_invalid")
            cookie = await sess.create_instance_session(
                session, session_id=parent.id, instance_id=inst.id, now=at
            )
        return cookie, safe_next(next_path)

    async def decide(self, *, instance_id: str, owner_id: str, cookie: str | None) -> Decision:
        """:func:`decide_cookie` with this gateway's store and session idle timeout: what the
        instance host's own endpoints (``/_aigc/...``) ask."""
        return await decide_cookie(
            self._db, instance_id=instance_id, owner_id=owner_id, cookie=cookie, idle=self._idle
        )

    async def forward(self, host: str, cookie: str | None) -> ForwardDecision:
        """Decide one request for an instance host (the forward-auth endpoint's core)."""
        slug = instance_slug(host, self._apps_domain)
        if slug is None:
            return ForwardDecision(403, reason="not an instance host")
        async with self._db.read() as session:
            inst = await _instance_by_slug(session, slug)
        if inst is None:
            return ForwardDecision(403, reason="no such instance")
        decision = await decide_cookie(
            self._db, instance_id=inst.id, owner_id=inst.owner_id, cookie=cookie, idle=self._idle
        )
        if isinstance(decision, Refused):
            return ForwardDecision(
                decision.status, reason="not allowed" if decision.status == 403 else "sign in"
            )
        return ForwardDecision(200, headers=_identity_headers(decision, inst))


async def decide_cookie(
    db: Database, *, instance_id: str, owner_id: str, cookie: str | None, idle: timedelta
) -> Decision:
    """May the holder of instance cookie ``cookie`` use this instance? Used by the proxy (which
    caches the answer briefly) and by forward-auth. 401: not signed in on this instance host
    (no cookie, an unknown one, one for another instance, an ended session); 403: not allowed."""
    if not cookie:
        return Refused(401)
    at = now()
    async with db.read() as session:
        found = await sess.instance_cookie_owner(session, cookie)
        if found is None:
            return Refused(401)
        icookie, parent, user = found
        if icookie.instance_id != instance_id:
            return Refused(401)
        if user.disabled or not sess.session_is_live(parent, now=at, idle=idle):
            return Refused(401)
        teams = await acl.team_ids_of(session, user.id)
        who = Principal(
            user_id=user.id,
            name=user.name,
            is_admin=user.is_admin,
            team_ids=teams,
            via=Via.INSTANCE_COOKIE,
            session_id=parent.id,
        )
        return await decide_principal(session, who, instance_id=instance_id, owner_id=owner_id)


async def decide_principal(
    session: AsyncSession, who: Principal, *, instance_id: str, owner_id: str
) -> Decision:
    """The one access rule applied to a known principal: may use (and may operate?) the instance."""
    shared = who.user_id != owner_id and await acl.is_shared_with(
        session, instance_id, who.user_id, who.team_ids
    )
    try:
        authorize_instance(who, owner_id, Access.USE, shared=shared)
    except (NotFound, Forbidden):
        return Refused(403)
    try:
        authorize_instance(who, owner_id, Access.OPERATE, shared=shared)
        may_operate = True
    except (NotFound, Forbidden):
        may_operate = False
    return Allowed(
        user_id=who.user_id,
        user_name=who.name,
        may_operate=may_operate,
        is_admin=who.is_admin,
        team_ids=who.team_ids,
    )


def _identity_headers(who: Allowed, inst: Instance) -> dict[str, str]:
    headers = {
        "X-Aigc-User": who.user_name,
        "X-Aigc-User-Id": who.user_id,
        "X-Aigc-Instance": inst.id,
        "X-Aigc-State": inst.state,
    }
    if inst.state == InstanceState.RUNNING and inst.endpoint:
        headers["X-Aigc-Upstream"] = inst.endpoint  # unix:/path or host:port
    return headers
