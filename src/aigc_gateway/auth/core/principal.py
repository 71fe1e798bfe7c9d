"""Who is asking, and the one permission check every route, page and proxied request uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from aigc_gateway.errors import Forbidden, NotFound


class Scope(enum.StrEnum):
    READ = "read"
    """See own (and shared) instances, templates, events and logs; open instances."""
    MANAGE = "manage"
    """Also create, start, pause, restart, delete and share own instances."""
    ADMIN = "admin"
    """Everything an administrator may do (only effective for admin users)."""


ALL_SCOPES = frozenset(Scope)


class Via(enum.StrEnum):
    TOKEN = "token"
    SESSION = "session"
    INSTANCE_COOKIE = "instance_cookie"


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    is_admin: bool
    scopes: frozenset[Scope] = ALL_SCOPES
    team_ids: frozenset[str] = field(default_factory=frozenset)
    via: Via = Via.TOKEN
    session_id: str | None = None
    csrf_token: str | None = None

    @property
    def acts_as_admin(self) -> bool:
        return self.is_admin and Scope.ADMIN in self.scopes

    @property
    def may_write(self) -> bool:
        return bool({Scope.MANAGE, Scope.ADMIN} & self.scopes)


class Access(enum.StrEnum):
    VIEW = "view"
    """Read the instance, its events and logs."""
    USE = "use"
    """Open the engine (proxy, WebSocket, forward-auth)."""
    OPERATE = "operate"
    """Start, pause, resume, restart."""
    DELETE = "delete"
    SHARE = "share"
    """Share it, or take a share back."""
    SEE_SHARES = "see_shares"
    """List whom it is shared with (the owner's and admins' business, readable with ``read``)."""


SHARED_MAY = frozenset({Access.VIEW, Access.USE, Access.OPERATE})
"""What a user an instance is shared with (directly or through a team) may do: not delete, not
reshare."""
READ_SCOPE_MAY = frozenset({Access.VIEW, Access.USE, Access.SEE_SHARES})


def authorize_instance(
    who: Principal, owner_id: str, access: Access, *, shared: bool = False
) -> None:
    """Allow the owner and admins everything; a shared user ``SHARED_MAY``; everyone else gets
    404, so instance ids do not reveal that an instance exists. A token whose scope is too narrow
    gets 403."""
    owner = who.user_id == owner_id
    if not (owner or who.acts_as_admin or shared):
        raise NotFound("no such instance", code="instance_not_found")
    if not (owner or who.acts_as_admin) and access not in SHARED_MAY:
        raise Forbidden(f"only the owner may {access.value} this instance", code="owner_only")
    if access not in READ_SCOPE_MAY and not who.may_write:
        raise Forbidden("this token may only read; create a token with the manage scope")


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""What the ``read`` scope allows on any route: reading, never a change."""


def authorize_method(who: Principal, method: str) -> None:
    """The acting credential's scope, checked for every request before any route runs: a
    credential without ``manage`` (or ``admin``) may only read. A session has all of its user's
    rights; admin routes check ``require_admin`` (the ``admin`` scope) on top."""
    if method.upper() not in READ_METHODS and not who.may_write:
        raise Forbidden(
            "this token may only read (GET); use a token with the manage scope",
            code="token_scope",
        )


def require_scopes(who: Principal, wanted: frozenset[Scope]) -> None:
    """A credential may hand on only the rights it has: a token creates tokens within its own
    scopes, and only an administrator's credential may create ``admin`` ones."""
    if Scope.ADMIN in wanted and not who.is_admin:
        raise Forbidden("only administrators may create admin tokens", code="admin_required")
    beyond = wanted - who.scopes
    if beyond:
        raise Forbidden(
            "a token cannot create a token with more rights than its own; it lacks "
            + ", ".join(sorted(beyond)),
            code="token_scope",
        )


def require_admin(who: Principal) -> None:
    if not who.acts_as_admin:
        raise Forbidden("this needs an administrator", code="admin_required")


def parse_scopes(text: str) -> frozenset[Scope]:
    if not text:
        return ALL_SCOPES
    return frozenset(Scope(s) for s in text.split(",") if s)
