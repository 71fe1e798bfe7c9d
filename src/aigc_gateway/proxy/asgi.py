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
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigc_gateway.accounts.access_cache import Allowed, Decision, Refused
from aigc_gateway.accounts.instance_access import INSTANCE_COOKIE, decide_cookie, decide_principal
from aigc_gateway.auth.principal import Principal, Via
from aigc_gateway.domain.hosts import instance_slug
from aigc_gateway.errors import GatewayError
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.lifecycle.service import Action
from aigc_gateway.metrics import Metrics
from aigc_gateway.proxy.answers import (
    FORBIDDEN,
    NO_INSTANCE,
    PAUSED,
    SIGN_IN,
    error_body,
    failed_page_text,
    failed_text,
)
from aigc_gateway.proxy.relay import Limits, relay_http, relay_websocket, upstream_headers
from aigc_gateway.web.i18n import request_lang
from aigc_gateway.web.pages import render

if TYPE_CHECKING:
    from aigc_gateway.gateway import Gateway

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

    def __init__(self, send: Send, metrics: Metrics, started: float) -> None:
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
        gw: Gateway = scope["app"].state.gateway
        host = _header(scope, b"host")
        slug = instance_slug(host, gw.settings.apps_domain)
        path: str = scope["path"]
        if slug is not None and not path.startswith("/_aigc/"):
            await self._instance(gw, scope, receive, send, slug=slug, host=host, prefix=None)
            return
        if slug is None and path.startswith("/i/"):
            candidate = path[3:].split("/", 1)[0]
            route = gw.controller.routes.get(candidate)
            loaded = gw.registry.get(route.template_id) if route else None
            if route is not None and loaded is not None and loaded.template.access.path_mode:
                await self._instance(
                    gw, scope, receive, send, slug=candidate, host=host, prefix=f"/i/{candidate}"
                )
                return
        await self.app(scope, receive, send)

    async def _instance(
        self,
        gw: Gateway,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        slug: str,
        host: str,
        prefix: str | None,
    ) -> None:
        started = time.perf_counter()
        route = gw.controller.routes.get(slug)
        if route is None:
            await self._refuse(scope, receive, send, 404, NO_INSTANCE)
            return
        decision = await self._decide(gw, scope, route, prefix)
        if isinstance(decision, Refused):
            if decision.status == 401 and _wants_html(scope) and prefix is None:
                await self._to_sign_in(gw, scope, send, host)
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
        gw.controller.activity.touch(route.instance_id)
        if route.state == "running" and route.upstream:
            observed = _Observed(send, gw.metrics, started)
            await self._relay(gw, scope, receive, observed, route, decision, host, prefix)
        elif route.state in WAKING:
            await self._wake(gw, scope, receive, send, route, decision, prefix)
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
        self, gw: Gateway, scope: Scope, route: Route, prefix: str | None
    ) -> Decision:
        cookie = _cookie(scope, access_cookie_name(prefix))
        if not cookie:
            return Refused(401)
        return await decide_access(gw, route, cookie, prefix)

    async def _relay(
        self,
        gw: Gateway,
        scope: Scope,
        receive: Receive,
        observed: _Observed,
        route: Route,
        who: Allowed,
        host: str,
        prefix: str | None,
    ) -> None:
        assert route.endpoint is not None
        session, base = gw.upstream.session(route.endpoint)
        settings = gw.settings
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
            token = live.add(route.slug, cookie, prefix, revoked.set)
            try:
                await relay_websocket(
                    scope,
                    receive,
                    observed.websocket,
                    session=session,
                    base=base,
                    headers=headers,
                    limits=limits,
                    on_message=lambda: gw.controller.activity.touch(route.instance_id),
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
        gw: Gateway,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        who: Allowed,
        prefix: str | None,
    ) -> None:
        """A request for an instance that is not running: start it if the user may and the
        template allows, then show a live "starting" page (browsers) or 503 + Retry-After."""
        loaded = gw.registry.get(route.template_id)
        may_wake = loaded is not None and loaded.template.access.wake_on_request and who.may_operate
        state = route.state
        if route.desired_state != "running":
            if not may_wake:
                await self._refuse(scope, receive, send, 409, PAUSED)
                return
            principal = Principal(
                user_id=who.user_id,
                name=who.user_name,
                is_admin=who.is_admin,
                team_ids=who.team_ids,
                via=Via.INSTANCE_COOKIE,
            )
            try:
                # The state after the resume (e.g. starting), not the paused one before it.
                state = (await gw.instances.act(principal, route.instance_id, Action.RESUME)).state
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

    async def _to_sign_in(self, gw: Gateway, scope: Scope, send: Send, host: str) -> None:
        scheme = "https" if scope.get("scheme") == "https" else "http"
        query = scope.get("query_string", b"").decode("latin-1")
        original = f"{scheme}://{host}{scope['path']}" + (f"?{query}" if query else "")
        await _redirect(
            send, f"{gw.settings.base_url}/auth/instance-login?rd={quote(original, safe='')}"
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
    return ("p:" if prefix else "h:") + cookie


async def decide_access(gw: Gateway, route: Route, cookie: str, prefix: str | None) -> Decision:
    """May the holder of ``cookie`` use ``route``'s instance? Host mode (``prefix`` None): the
    instance cookie; path mode (same host as the gateway): the session. Answers are cached."""

    async def load() -> Decision:
        if prefix is None:
            return await decide_cookie(
                gw.db,
                instance_id=route.instance_id,
                owner_id=route.owner_id,
                cookie=cookie,
                idle=gw.instance_access.idle,
            )
        return await _decide_session(gw, route, cookie)

    return await gw.access_cache.get_or_load(route.slug, access_key(cookie, prefix), load)


async def _decide_session(gw: Gateway, route: Route, cookie: str) -> Decision:
    who = await gw.accounts.principal_for_session(cookie)
    if who is None:
        return Refused(401)
    async with gw.db.read() as session:
        return await decide_principal(
            session, who, instance_id=route.instance_id, owner_id=route.owner_id
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
