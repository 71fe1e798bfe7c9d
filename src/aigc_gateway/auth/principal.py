"""Who is asking, and the one permission check every route uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.errors import Forbidden, NotFound


class Scope(enum.StrEnum):
    READ = "read"
    """See own instances, templates, events and logs."""
    MANAGE = "manage"
    """Also create, start, pause, restart and delete own instances."""
    ADMIN = "admin"
    """Everything an admin may do (only for admin users)."""


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    is_admin: bool
    scopes: frozenset[Scope] = ALL_SCOPES

    @property
    def acts_as_admin(self) -> bool:
        return self.is_admin and Scope.ADMIN in self.scopes


class Access(enum.StrEnum):
    VIEW = "view"
    MANAGE = "manage"


def authorize_instance(who: Principal, owner_id: str, access: Access) -> None:
    """Allow the owner and admins; everyone else gets 404 so ids do not leak existence.

    A principal whose token lacks the scope gets 403.
    """
    if not (who.user_id == owner_id or who.acts_as_admin):
        raise NotFound("no such instance", code="instance_not_found")
    if access is Access.MANAGE and not ({Scope.MANAGE, Scope.ADMIN} & who.scopes):
        raise Forbidden("this token may only read; create a token with the manage scope")


def require_admin(who: Principal) -> None:
    if not who.acts_as_admin:
        raise Forbidden("this needs an administrator", code="admin_required")


def parse_scopes(text: str) -> frozenset[Scope]:
    if not text:
        return ALL_SCOPES
    return frozenset(Scope(s) for s in text.split(",") if s)
