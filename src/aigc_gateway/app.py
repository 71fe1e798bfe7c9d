"""The ASGI app factory. Nothing happens at import; ``create_app(settings)`` and its lifespan own
every resource (store, runtime, controller, template watcher)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from aigc_gateway import __version__
from aigc_gateway.api import (
    admin,
    files,
    gpus,
    health,
    instance_host,
    instances,
    me,
    metrics,
    templates,
    usage,
)
from aigc_gateway.api import errors as api_errors
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.dashboard.routes import admin as dashboard_admin
from aigc_gateway.dashboard.routes import signin
from aigc_gateway.dashboard.routes import user as dashboard
from aigc_gateway.dashboard.ui.i18n import LanguageMiddleware
from aigc_gateway.gateway import open_gateway
from aigc_gateway.lifecycle.duties import Poke, TemplateReload, TemplateWatch
from aigc_gateway.lifecycle.guard import Backoff, Duties, Sleep
from aigc_gateway.metrics import Metrics
from aigc_gateway.proxy.asgi import InstanceProxy
from aigc_gateway.proxy.live import LiveSockets
from aigc_gateway.proxy.pool import UpstreamPool
from aigc_gateway.settings import Settings

log = logging.getLogger(__name__)

LIVE_SOCKET_CHECK_S = 60.0
"""How often open WebSockets and event streams are decided again without a change seen here
(another replica's)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    gw = await open_gateway(
        settings, ledger_clock=app.state.ledger_clock, migrate=not app.state.migrated
    )
    app.state.gateway = gw
    app.state.proxy_ports = gw.proxy  # all the proxy sees of the gateway
    # The connection-level proxy's engine connections.
    app.state.engine_pool = UpstreamPool(relay_key=gw.relay_key)
    live = app.state.live_sockets = (
        LiveSockets()
    )  # WebSockets, event streams: closed when access ends
    gw.access_cache.on_clear(live.check_soon)
    rechecks = asyncio.create_task(live.every(LIVE_SOCKET_CHECK_S), name="websocket-access")
    await gw.controller.start()
    reloads, sighup = template_duties(gw.registry, gw.metrics, watch=settings.watch_templates)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, sighup.set)
    try:
        yield
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        rechecks.cancel()
        await asyncio.gather(reloads.close(), rechecks, return_exceptions=True)
        live.close()
        app.state.engine_pool.close()
        await gw.close()


def template_duties(
    registry: TemplateRegistry, metrics: Metrics, *, watch: bool, sleep: Sleep = asyncio.sleep
) -> tuple[Duties, Poke]:
    """Start the template duties of ``registry``: ``template-reload``, a reload each time the
    returned :class:`Poke` is set (SIGHUP), and, when ``watch``, ``template-watch``, a reload at
    each change in the folder. Both are guarded duties: measured, a failure logged and retried
    with back-off on ``sleep`` (the retry reloads first, so no change is lost), never ending
    the app. Closing the returned duties ends them (and the folder watch)."""
    started = Duties(metrics=metrics, sleep=sleep)
    reload = TemplateReload(registry).step
    poke = Poke()
    started.start("template-reload", reload, trigger=poke, backoff=Backoff(first=1.0, most=60.0))
    if watch:
        folder = TemplateWatch(registry.directory)
        started.start(
            "template-watch", reload, trigger=folder, backoff=Backoff(first=1.0, most=60.0)
        )
    return started, poke


class GatewayApp(FastAPI):
    """The gateway's ASGI app: instance traffic goes to the proxy before anything else, so
    engine requests skip the framework's middleware stack (error pages, telemetry, body limits:
    the proxy has its own); everything else is the FastAPI app."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entry = InstanceProxy(functools.partial(FastAPI.__call__, self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        await self._entry(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    ledger_clock: Callable[[], datetime] | None = None,
    migrated: bool = False,
) -> FastAPI:
    """The app; ``ledger_clock`` replaces the time the usage ledger records (tests).
    ``migrated``: the store was migrated by this start already (``serve``'s bootstrap); the
    lifespan then does not migrate it again."""
    app = GatewayApp(
        title="AIGC Gateway",
        version=__version__,
        lifespan=lifespan,
        description="Per-user AI content engines on shared GPUs.",
    )
    app.state.settings = settings
    app.state.ledger_clock = ledger_clock
    app.state.migrated = migrated
    app.add_middleware(LanguageMiddleware)  # the gateway's pages in the visitor's language
    api_errors.install(app, not_found_page=dashboard.not_found_page)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(me.router)
    app.include_router(templates.router)
    app.include_router(instances.router)
    app.include_router(admin.router)
    app.include_router(gpus.router)
    app.include_router(usage.router)
    app.include_router(signin.router)
    app.include_router(instance_host.router)
    app.include_router(files.router)
    app.include_router(dashboard_admin.router)
    app.include_router(dashboard.router)
    return app
