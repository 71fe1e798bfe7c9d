"""What the proxy needs from the rest of the gateway, and nothing more.

The proxy (the ASGI middleware, the connection-level front protocol, the open-socket registry)
is handed one ``ProxyPorts``, built by the composition root (``aigc_gateway.gateway``), instead
of the whole gateway: it reads the route table, asks for access decisions, records activity and
metrics, reaches engines through a connection pool, and may resume a paused instance. It never
opens a store session: an access-cache miss is read by the accounts layer behind
``AccessDecider``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from aigc_gateway.auth.services.access_cache import Allowed, Decision
from aigc_gateway.catalog.loader import LoadedTemplate
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.metrics import ProxyKind
from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.settings import Settings


class RouteView(Protocol):
    """The route table, read-only (the controller alone writes it)."""

    def get(self, slug: str) -> Route | None: ...


class TemplateView(Protocol):
    """The template catalog, read-only (path mode, wake-on-request)."""

    def get(self, template_id: str) -> LoadedTemplate | None: ...


class AccessDecider(Protocol):
    """May the holder of a cookie use an instance? ``key`` is the cache key of the cookie in its
    mode (``aigc_gateway.auth.services.proxy_access.access_key``)."""

    def cached(self, slug: str, key: str) -> Decision | None:
        """The answer if it is cached; no I/O (the connection-level proxy's hot path)."""
        ...

    def decide(
        self, *, slug: str, instance_id: str, owner_id: str, cookie: str, path_mode: bool
    ) -> Awaitable[Decision]:
        """The answer, read from the store on a cache miss (and then cached)."""
        ...


class Activity(Protocol):
    """Records that an instance was used (idle pausing counts from the last touch)."""

    def touch(self, instance_id: str) -> None: ...


class ProxyMetrics(Protocol):
    """The metrics the proxy reports (constant time, no I/O, never raises)."""

    def proxy_request(self, kind: ProxyKind, status: int, seconds: float) -> None: ...


class EnginePool(Protocol):
    """Pooled HTTP sessions to engines (the ASGI proxy's relay)."""

    def session(self, endpoint: Endpoint) -> tuple[aiohttp.ClientSession, str]: ...


class Waker(Protocol):
    """Resumes a paused instance for a user allowed to operate it (wake-on-request)."""

    def resume(self, who: Allowed, instance_id: str) -> Awaitable[str]:
        """Resume it; the instance's state afterwards. Raises ``GatewayError`` when refused."""
        ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The few settings the proxy reads."""

    apps_domain: str
    base_url: str
    proxy_connect_timeout_s: float
    proxy_read_timeout_s: float
    proxy_max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> ProxySettings:
        return cls(
            apps_domain=settings.apps_domain,
            base_url=settings.base_url,
            proxy_connect_timeout_s=settings.proxy_connect_timeout_s,
            proxy_read_timeout_s=settings.proxy_read_timeout_s,
            proxy_max_body_bytes=settings.proxy_max_body_bytes,
        )


@dataclass(frozen=True, slots=True)
class ProxyPorts:
    """Everything the proxy uses, built once by the composition root."""

    settings: ProxySettings
    routes: RouteView
    templates: TemplateView
    access: AccessDecider
    activity: Activity
    metrics: ProxyMetrics
    upstream: EnginePool
    waker: Waker
