"""The proxy as pure ASGI middleware in front of the gateway's own routes.

A request whose ``Host`` is exactly ``<slug>.<apps_domain>`` (any port) goes to that instance's
engine; so does ``/i/<slug>/…`` on the gateway's host for templates that allow path mode. All
else — and ``/_aigc/…`` on instance hosts (hand-over, wake page events) — goes to the app.
The hot path reads only memory: the route table, the template catalog, the access cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigc_gateway.auth.services.access_cache import Allowed, Decision, Refused
from aigc_gateway.auth.services.instance_access import INSTANCE_COOKIE
from aigc_gateway.auth.services.proxy_access import access_key as cache_key
from aigc_gateway.dashboard.ui.i18n import request_lang
from aigc_gateway.dashboard.ui.pages import render
from aigc_gateway.domain.hosts import instance_slug
from aigc_gateway.errors import GatewayError
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.proxy.answers import (
    FORBIDDEN,
    NO_INSTANCE,
    PAUSED,
    SIGN_IN,
    error_body,
    failed_page_text,
    failed_text,
)
from aigc_gateway.proxy.ports import ProxyMetrics, ProxyPorts
from aigc_gateway.proxy.relay import Limits, relay_http, relay_websocket, upstream_headers

log = logging.getLogger(__name__)

WAKING = frozenset({"pending", "starting", "stopping", "paused"})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _cookie(scope: Scope, name: str) -> str | None:
    for part in _header(scope, b"cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _wants_html(scope: Scope) -> bool:
    return scope["type"] == "http" and "text/html" in _header(scope, b"accept")


class _Observed:
    """The ``send`` of one relayed exchange, reporting its outcome to the metrics: an HTTP
    answer's status when the request ends, a WebSocket when it is accepted or refused."""

    __slots__ = ("_metrics", "_send", "_started", "status")

    def __init__(self, send: Send, metrics: ProxyMetrics, started: float) -> None:
        self._send, self._metrics, self._started = send, metrics, started
        self.status = 0

    async def http(self, message: Message) -> None:
        if not self.status and message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

    def http_done(self) -> None:
        self._metrics.proxy_request("http", self.status, time.perf_counter() - self._started)

    async def websocket(self, message: Message) -> None:
        if not self.status and message["type"] in ("websocket.accept", "websocket.close"):
            self.status = 101 if message["type"] == "websocket.accept" else 502
            self._metrics.proxy_request(
                "websocket", self.status, time.perf_counter() - self._started
            )
        await self._send(message)


class InstanceProxy:
    """Routes instance traffic to engines; everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ports: ProxyPorts = scope["app"].state.proxy_ports
        host = _header(scope, b"host")
        slug = instance_slug(host, ports.settings.apps_domain)
        path: str = scope["path"]
        if slug is not None and not path.startswith("/_aigc/"):
            await self._instance(ports, scope, receive, send, slug=slug, host=host, prefix=None)
            return
        if slug is None and path.startswith("/i/"):
            candidate = path[3:].split("/", 1)[0]
            route = ports.routes.get(candidate)
            loaded = ports.templates.get(route.template_id) if route else None
            if route is not None and loaded is not None and loaded.template.access.path_mode:
                await self._instance(
                    ports, scope, receive, send, slug=candidate, host=host, prefix=f"/i/{candidate}"
                )
                return
        await self.app(scope, receive, send)

    async def _instance(
        self,
        ports: ProxyPorts,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        slug: str,
        host: str,
        prefix: str | None,
    ) -> None:
        started = time.perf_counter()
        route = ports.routes.get(slug)
        if route is None:
            await self._refuse(scope, receive, send, 404, NO_INSTANCE)
            return
        decision = await self._decide(ports, scope, route, prefix)
        if isinstance(decision, Refused):
            if decision.status == 401 and _wants_html(scope) and prefix is None:
                await self._to_sign_in(ports, scope, send, host)
            elif decision.status == 401 and _wants_html(scope):
                await _redirect(send, f"/auth/login?next={quote(scope['path'], safe='')}")
            else:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    decision.status,
                    SIGN_IN if decision.status == 401 else FORBIDDEN,
                )
            return
        ports.activity.touch(route.instance_id)
        if route.state == "running" and route.upstream:
            observed = _Observed(send, ports.metrics, started)
            await self._relay(ports, scope, receive, observed, route, decision, host, prefix)
        elif route.state in WAKING:
            await self._wake(ports, scope, receive, send, route, decision, prefix)
        else:
            await self._refuse(
                scope,
                receive,
                send,
                502,
                failed_text(route),
                page_text=lambda lang: failed_page_text(route, lang),
            )

    async def _decide(
        self, ports: ProxyPorts, scope: Scope, route: Route, prefix: str | None
    ) -> Decision:
        cookie = _cookie(scope, access_cookie_name(prefix))
        if not cookie:
            return Refused(401)
        return await decide_access(ports, route, cookie, prefix)

    async def _relay(
        self,
        ports: ProxyPorts,
        scope: Scope,
        receive: Receive,
        observed: _Observed,
        route: Route,
        who: Allowed,
        host: str,
        prefix: str | None,
    ) -> None:
        assert route.endpoint is not None
        session, base = ports.upstream.session(route.endpoint)
        settings = ports.settings
        limits = Limits(
            settings.proxy_connect_timeout_s,
            settings.proxy_read_timeout_s,
            settings.proxy_max_body_bytes,
        )
        websocket = scope["type"] == "websocket"
        headers = upstream_headers(
            scope, user_name=who.user_name, host=host, prefix=prefix, websocket=websocket
        )
        if websocket:
            revoked = asyncio.Event()
            cookie = _cookie(scope, access_cookie_name(prefix)) or ""
            live = scope["app"].state.live_sockets
            token = live.add(ports, route.slug, cookie, prefix, revoked.set)
            try:
                await relay_websocket(
                    scope,
                    receive,
                    observed.websocket,
                    session=session,
                    base=base,
                    headers=headers,
                    limits=limits,
                    on_message=lambda: ports.activity.touch(route.instance_id),
                    revoked=revoked,
                )
            finally:
                live.discard(token)
            return
        html = _wants_html(scope)
        try:
            await relay_http(
                scope,
                receive,
                observed.http,
                session=session,
                base=base,
                headers=headers,
                limits=limits,
                error=lambda status, text: error_body(status, text, html, lang=request_lang(scope)),
            )
        finally:
            observed.http_done()

    async def _wake(
        self,
        ports: ProxyPorts,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        who: Allowed,
        prefix: str | None,
    ) -> None:
        """A request for an instance that is not running: start it if the user may and the
        template allows, then show a live "starting" page (browsers) or 503 + Retry-After."""
        loaded = ports.templates.get(route.template_id)
        may_wake = loaded is not None and loaded.template.access.wake_on_request and who.may_operate
        state = route.state
        if route.desired_state != "running":
            if not may_wake:
                await self._refuse(scope, receive, send, 409, PAUSED)
                return
            try:
                # The state after the resume (e.g. starting), not the paused one before it.
                state = await ports.waker.resume(who, route.instance_id)
            except GatewayError as exc:
                await self._refuse(scope, receive, send, exc.status, exc.message)
                return
        if scope["type"] == "websocket":
            await self._refuse(scope, receive, send, 503, "starting")
            return
        if _wants_html(scope):
            events = (
                f"/api/instances/{route.instance_id}/events/stream" if prefix else "/_aigc/events"
            )
            page = render(
                "instance_starting.html",
                lang=request_lang(scope),
                title="Starting",
                events_url=events,
                state=state,
            )
            await _respond(send, 503, "text/html; charset=utf-8", page.encode(), retry_after=2)
        else:
            body = json.dumps(
                {
                    "code": "instance_starting",
                    "message": "the instance is starting; retry shortly",
                    "state": state,
                }
            ).encode()
            await _respond(send, 503, "application/json", body, retry_after=2)

    async def _to_sign_in(self, ports: ProxyPorts, scope: Scope, send: Send, host: str) -> None:
        scheme = "https" if scope.get("scheme") == "https" else "http"
        query = scope.get("query_string", b"").decode("latin-1")
        original = f"{scheme}://{host}{scope['path']}" + (f"?{query}" if query else "")
        await _redirect(
            send, f"{ports.settings.base_url}/auth/instance-login?rd={quote(original, safe='')}"
        )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        text: str,
        page_text: Callable[[str], str] | None = None,
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        html = _wants_html(scope)
        lang = request_lang(scope)
        content_type, body = error_body(
            status, text, html, lang=lang, page_text=page_text(lang) if page_text else None
        )
        await _respond(send, status, content_type, body)


def access_cookie_name(prefix: str | None) -> str:
    """Host mode (no prefix): the instance cookie; path mode (the gateway's host): the session."""
    return INSTANCE_COOKIE if prefix is None else "aigc_session"


def access_key(cookie: str, prefix: str | None) -> str:
    """The access cache's key of ``cookie`` in the mode ``prefix`` says."""
    return cache_key(cookie, path_mode=prefix is not None)


async def decide_access(
    ports: ProxyPorts, route: Route, cookie: str, prefix: str | None
) -> Decision:
    """May the holder of ``cookie`` use ``route``'s instance? Host mode (``prefix`` None): the
    instance cookie; path mode (same host as the gateway): the session. Answers are cached (the
    store is read behind the ``AccessDecider`` port, never here)."""
    return await ports.access.decide(
        slug=route.slug,
        instance_id=route.instance_id,
        owner_id=route.owner_id,
        cookie=cookie,
        path_mode=prefix is not None,
    )


async def _respond(
    send: Send, status: int, content_type: str, body: bytes, retry_after: int | None = None
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _redirect(send: Send, location: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
