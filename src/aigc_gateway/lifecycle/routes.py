"""The in-memory route table the proxy reads: slug → where the engine is and in what state.

The lifecycle controller updates it on every transition (and the table is loaded from the store
at start), so the proxy never asks the store where an engine is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aigc_gateway.runtime.base import Endpoint


class _InstanceLike(Protocol):
    id: str
    slug: str
    owner_id: str
    template_id: str
    state: str
    desired_state: str
    reason: str
    exit_code: int | None
    endpoint: str | None
    ready_at: datetime | None


@dataclass(frozen=True, slots=True)
class Route:
    instance_id: str
    slug: str
    owner_id: str
    template_id: str
    state: str
    desired_state: str
    reason: str
    exit_code: int | None
    endpoint: Endpoint | None
    """How to reach the engine while it runs (a Unix socket or a TCP address), else None."""
    ready_at: float | None = None
    """When the engine last became ready (epoch seconds): idle time counts from here at least."""
    upstream: str | None = None
    """The endpoint's text (``unix:/path`` or ``host:port``), kept with it: the relay's pool key."""

    def __post_init__(self) -> None:
        if self.endpoint is not None and self.upstream is None:
            object.__setattr__(self, "upstream", self.endpoint.describe)

    @classmethod
    def of(cls, inst: _InstanceLike) -> Route:
        running = inst.state == "running" and inst.endpoint
        return cls(
            instance_id=inst.id,
            slug=inst.slug,
            owner_id=inst.owner_id,
            template_id=inst.template_id,
            state=inst.state,
            desired_state=inst.desired_state,
            reason=inst.reason,
            exit_code=inst.exit_code,
            endpoint=Endpoint.parse(inst.endpoint) if running and inst.endpoint else None,
            ready_at=inst.ready_at.timestamp() if inst.ready_at else None,
        )


class RouteTable:
    """slug → route. ``on_change(instance_id)`` is told of every change made here (not of those
    put with ``announce=False``: changes heard from another gateway process)."""

    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self._by_slug: dict[str, Route] = {}
        self._slug_of: dict[str, str] = {}
        self.on_change = on_change

    def get(self, slug: str) -> Route | None:
        return self._by_slug.get(slug)

    def by_instance(self, instance_id: str) -> Route | None:
        slug = self._slug_of.get(instance_id)
        return self._by_slug.get(slug) if slug else None

    def put(self, route: Route, *, announce: bool = True) -> None:
        if route.state == "deleted":
            self.remove(route.instance_id, announce=announce)
            return
        old_slug = self._slug_of.get(route.instance_id)
        if old_slug is not None and old_slug != route.slug:
            self._by_slug.pop(old_slug, None)  # renamed: the old host name leads nowhere now
        self._by_slug[route.slug] = route
        self._slug_of[route.instance_id] = route.slug
        if announce and self.on_change is not None:
            self.on_change(route.instance_id)

    def remove(self, instance_id: str, *, announce: bool = True) -> None:
        slug = self._slug_of.pop(instance_id, None)
        if slug is not None:
            self._by_slug.pop(slug, None)
        if announce and self.on_change is not None:
            self.on_change(instance_id)

    def all(self) -> list[Route]:
        return list(self._by_slug.values())

    def __len__(self) -> int:
        return len(self._by_slug)
