"""The gateway's HTTP/1.1 connections: instance traffic relayed at the connection level.

uvicorn hands every accepted connection to ``FrontProtocol`` (its ``http=`` setting). For each
request head it decides from memory alone, by the rules the ASGI proxy (``asgi.py``) follows:

- a request for a *running* instance whose access is already decided (the access cache) is
  relayed here: the head rewritten by ``wire.py``'s rules (with the body's framing written by
  the proxy, ``wire.upstream_request``), the body streamed to a pooled engine connection, the engine's answer streamed back as it comes; a WebSocket handshake the
  engine accepts becomes a byte tunnel (frames, pings and close codes pass untouched);
- a request whose access is not known yet waits for the same loader and cache the ASGI proxy
  uses, then is decided again;
- anything else — the gateway's own pages and API, sign-in, refusals, wake-on-request,
  ``Expect`` or chunked uploads, percent-encoded paths, over-limit bodies — and the rest of
  that connection go to uvicorn's own protocol and the ASGI app, handed over at a request
  boundary with the request's bytes unread (the way uvicorn itself hands a connection to its
  WebSocket protocol).

Per request this skips building an ASGI scope and the HTTP client's request and response
objects; ``bench/proxy`` measures what that is worth. ``proxy_fast_path: false`` turns it off.

Guarantees kept from the ASGI path: bodies are streamed with back-pressure both ways (a slow
reader pauses the other socket), a client that leaves aborts the engine request, an engine
that fails before answering gives the same error page or JSON (502/504), a stale pooled
connection is retried once for requests without a body, activity is touched per request and
per WebSocket chunk, and each exchange is reported to the metrics. Forwarding headers are
believed only from the ``trusted_proxies`` of the settings (``server.server_options`` gives
uvicorn the same list for the ASGI side), and the uvicorn version is checked first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aigc_gateway.auth.services.access_cache import Allowed, Decision
from aigc_gateway.dashboard.ui.i18n import negotiate
from aigc_gateway.domain.hosts import instance_slug
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.proxy.answers import BAD_ANSWER, CLOSED, TIMEOUT, UNREACHABLE, error_body
from aigc_gateway.proxy.asgi import access_cookie_name, access_key, decide_access
from aigc_gateway.proxy.live import LiveSockets
from aigc_gateway.proxy.pool import UpstreamConnection, UpstreamPool
from aigc_gateway.proxy.ports import ProxyPorts
from aigc_gateway.proxy.wire import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    Headers,
    RequestHead,
    chunk,
    downstream,
    forwarded_for,
    parse_request_head,
    response_head,
    upstream_request,
)

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState


log = logging.getLogger(__name__)

BUFFERED_BYTES = 256 * 1024
"""Client bytes held while they cannot be sent on: past this the client is not read."""
RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Sent again on a fresh connection if a pooled one turns out closed before any answer."""
UPGRADE_HEADERS = frozenset({b"connection", b"upgrade"})


class _Exchange:
    """One request on its way to an engine and its answer on its way back. It is also the
    response parser's callback object."""

    __slots__ = (
        "answered",
        "body_left",
        "chunked_out",
        "close_after",
        "close_delimited",
        "connecting",
        "cookie",
        "done",
        "early",
        "excess",
        "front",
        "head",
        "interim",
        "keep_alive",
        "last_read",
        "parser",
        "prefix",
        "response_headers",
        "retried",
        "reused",
        "route",
        "sent_head",
        "started",
        "status",
        "timer",
        "upstream",
        "upstream_head",
        "websocket",
    )

    def __init__(self, front: FrontProtocol, head: RequestHead, route: Route) -> None:
        self.front, self.head, self.route = front, head, route
        self.started = time.perf_counter()
        self.status = 0
        self.body_left = 0
        self.upstream: UpstreamConnection | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.upstream_head = b""
        self.response_headers: Headers = []
        self.websocket = False
        self.reused = self.retried = self.answered = False
        self.sent_head = self.chunked_out = self.close_after = False
        self.interim = self.done = self.close_delimited = self.keep_alive = False
        self.early = self.excess = False
        self.last_read = 0.0
        self.cookie = ""
        self.prefix: str | None = None

    # httptools.HttpResponseParser callbacks
    def on_message_begin(self) -> None:
        if self.done:  # the engine says more than one answer: its connection is not reused
            self.excess = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.done:  # more after a complete answer: never relayed, never reused
            self.keep_alive = False
            return
        self.front.response_started(self)

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.front.response_body(self, body)
        else:  # bytes after an answer to HEAD, which has no body
            self.excess = True

    def on_message_complete(self) -> None:
        if self.interim:  # the end of a 1xx answer: the real one follows
            self.interim = False
            return
        self.front.response_done(self)


class FrontProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol for the gateway (see the module's docstring).

    Built per app by ``server.front_protocol(app)``; uvicorn constructs one per connection with the
    arguments it gives any HTTP protocol class.
    """

    gateway_app: ClassVar[Any]
    """The gateway's ASGI app: ``state.gateway`` once its lifespan has opened it."""
    trusted: ClassVar[Any] = None
    """The proxies (``trusted_proxies``) whose forwarding headers are believed; None: none."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.scheme = "http"
        self.peer_trusted = False
        self.buffer = bytearray()
        self.exchange: _Exchange | None = None
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_instance = ""
        self.tunnel_token = 0
        self.loading: asyncio.Task[Decision] | None = None
        self.decided: tuple[str, Decision] | None = None
        self.handed = False
        self.closing = False
        self.writable = True
        self.paused_for: set[str] = set()
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- client side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        trusted = self.trusted
        self.peer_trusted = trusted is not None and self.client_ip in trusted

    def data_received(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.tunnel is not None:
            self.tunnel.write(data)
            self._touch(self.tunnel_instance)
            return
        ex = self.exchange
        if ex is not None and ex.body_left and ex.upstream is not None and not self.buffer:
            if len(data) <= ex.body_left:
                ex.upstream.write(data)
                ex.body_left -= len(data)
                return
            ex.upstream.write(data[: ex.body_left])
            data = data[ex.body_left :]
            ex.body_left = 0
        self.buffer += data
        if ex is not None or self.loading is not None:
            if ex is not None:
                self._pump_body(ex)
            if len(self.buffer) > BUFFERED_BYTES:
                self._pause_reading("buffer")
            return
        self._next()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; an exchange in flight is abandoned

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.loading is not None:
            self.loading.cancel()
        if self.tunnel is not None:
            self._live().discard(self.tunnel_token)
            self.tunnel.close()
            self.tunnel = None
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            self._stop(ex)
            if ex.upstream is not None:
                ex.upstream.abort()  # the client left: the engine's work for it is cancelled
            self._report(ex)

    def pause_writing(self) -> None:
        self.writable = False
        upstream = self.tunnel or (self.exchange.upstream if self.exchange else None)
        if upstream is not None:
            upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        upstream = self.tunnel or (self.exchange.upstream if self.exchange else None)
        if upstream is not None:
            upstream.resume_reading()

    def shutdown(self) -> None:
        """uvicorn is stopping: close now if idle, else after the answer in flight."""
        if self.transport is None:
            return
        if self.exchange is not None or self.loading is not None:
            self.closing = True
        else:
            self.transport.close()

    # --- deciding --------------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request head from the buffer, if it is all there."""
        if self.handed or self.closing or self.exchange or self.loading or self.transport is None:
            return
        if not self.buffer:
            if self.idle_timer is not None:
                self.idle_timer.cancel()
            self.idle_timer = self.loop.call_later(self.config.timeout_keep_alive, self._idle_close)
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._hand_off()
            return
        ports: ProxyPorts | None = getattr(self.gateway_app.state, "proxy_ports", None)
        head = parse_request_head(bytes(self.buffer[: end + 4]))
        if ports is None or head is None or (plan := self._plan(ports, head)) is None:
            self._hand_off()
            return
        route, prefix, cookie, host = plan
        key = access_key(cookie, prefix)
        decision: Decision | None
        if self.decided is not None and self.decided[0] == key:
            decision = self.decided[1]
        else:
            decision = ports.access.cached(route.slug, key)
        self.decided = None
        if decision is None:
            self._load(ports, route, cookie, prefix, key)
        elif isinstance(decision, Allowed):
            del self.buffer[: end + 4]
            self._start(ports, head, route, decision, prefix, host, cookie)
        else:
            self._hand_off()  # the ASGI proxy answers refusals (sign-in, 403 pages)

    def _plan(
        self, ports: ProxyPorts, head: RequestHead
    ) -> tuple[Route, str | None, str, str] | None:
        """``(route, prefix, cookie, host)`` when this request may be relayed here, else None."""
        path = head.target.split(b"?", 1)[0]
        if not path.startswith(b"/") or b"%" in path:
            return None  # decoded paths are the ASGI app's to match
        if head.upgrade and not head.is_websocket():
            return None
        length = head.body_length()
        if length is None or head.count(b"expect"):
            return None  # framing the ASGI server checks (and refuses when it is ambiguous)
        limit = ports.settings.proxy_max_body_bytes
        if limit and length > limit:
            return None
        raw_host = head.one(b"host")
        if raw_host is None:
            return None
        host = raw_host.decode("latin-1")
        slug = instance_slug(host, ports.settings.apps_domain)
        prefix = None
        if slug is not None:
            if path.startswith(b"/_aigc/"):
                return None
        elif path.startswith(b"/i/"):
            slug = path[3:].split(b"/", 1)[0].decode("latin-1")
            route = ports.routes.get(slug)
            loaded = ports.templates.get(route.template_id) if route else None
            if loaded is None or not loaded.template.access.path_mode:
                return None
            prefix = f"/i/{slug}"
        else:
            return None
        route = ports.routes.get(slug)
        if route is None or route.state != "running" or not route.upstream:
            return None
        cookie = head.cookie(access_cookie_name(prefix).encode())
        if not cookie:
            return None
        return route, prefix, cookie, host

    def _load(
        self, ports: ProxyPorts, route: Route, cookie: str, prefix: str | None, key: str
    ) -> None:
        """Decide access (the store, once per cookie and TTL), then look at the head again."""
        self._pause_reading("loading")
        task = self.loop.create_task(decide_access(ports, route, cookie, prefix))
        self.loading = task

        def loaded(done: asyncio.Task[Decision]) -> None:
            self.loading = None
            if done.cancelled() or self.transport is None or self.transport.is_closing():
                return
            self._resume_reading("loading")
            failure = done.exception()
            if failure is not None:
                log.warning("access check failed: %s", type(failure).__name__)
                self._hand_off()  # the ASGI app reports it
                return
            self.decided = (key, done.result())
            if self.closing:
                self.transport.close()
                return
            self._next()

        task.add_done_callback(loaded)

    def _hand_off(self) -> None:
        """The rest of this connection is uvicorn's: its protocol gets the transport and the
        bytes not read yet."""
        transport = self.transport
        if transport is None or self.handed:
            return
        self.handed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.server_state.connections.discard(self)
        protocol = HttpToolsProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.paused_for:
            self.paused_for.clear()
            transport.resume_reading()
        if not self.writable:
            protocol.pause_writing()
        data = bytes(self.buffer)
        self.buffer.clear()
        if data:
            protocol.data_received(data)

    # --- relaying ----------------------------------------------------------------------------

    def _start(
        self,
        ports: ProxyPorts,
        head: RequestHead,
        route: Route,
        who: Allowed,
        prefix: str | None,
        host: str,
        cookie: str,
    ) -> None:
        assert route.upstream is not None
        ex = _Exchange(self, head, route)
        ex.cookie, ex.prefix = cookie, prefix
        ex.websocket = head.is_websocket()
        ex.body_left = head.body_length() or 0  # _plan relays only what Content-Length frames
        ex.close_after = not head.keep_alive or ex.websocket  # a refused handshake ends it
        scheme, client_ip = self.scheme, self.client_ip
        if self.peer_trusted:
            scheme, client_ip = self._forwarded(head, scheme, client_ip)
        ex.upstream_head = upstream_request(
            head,
            body_length=ex.body_left,
            websocket=ex.websocket,
            gateway=forwarded_for(
                client_ip=client_ip,
                scheme=scheme,
                host=host,
                user_name=who.user_name,
                prefix=prefix,
            ),
        )
        self.exchange = ex
        self.server_state.total_requests += 1
        ports.activity.touch(route.instance_id)
        conn = None if ex.websocket else self._pool().take(route.upstream)
        if conn is not None:
            self._attach(ex, conn, reused=True)
        else:
            self._connect(ports, ex)

    def _forwarded(self, head: RequestHead, scheme: str, client_ip: str) -> tuple[str, str]:
        """A trusted proxy in front of the gateway says who the client is (as uvicorn's
        ``ProxyHeadersMiddleware`` reads it for the ASGI app)."""
        proto = head.one(b"x-forwarded-proto")
        if proto is not None and proto.strip() in (b"http", b"https", b"ws", b"wss"):
            scheme = proto.strip().decode()
        chain = [v for k, v in head.headers if k == b"x-forwarded-for"]
        if chain:
            found, _ = self.trusted.get_trusted_client_address(b", ".join(chain).decode("latin-1"))
            client_ip = found or client_ip
        return scheme, client_ip

    def _connect(self, ports: ProxyPorts, ex: _Exchange) -> None:
        assert ex.route.endpoint is not None
        task = self.loop.create_task(
            self._pool().connect(ex.route.endpoint, ports.settings.proxy_connect_timeout_s)
        )
        ex.connecting = task

        def connected(done: asyncio.Task[UpstreamConnection]) -> None:
            ex.connecting = None
            if done.cancelled():
                return
            failure = done.exception()
            if ex is not self.exchange:  # the client left meanwhile
                if failure is None:
                    done.result().close()
                return
            if isinstance(failure, TimeoutError):
                self._fail(ex, 504, TIMEOUT)
            elif failure is not None:
                self._fail(ex, 502, UNREACHABLE)
            else:
                self._attach(ex, done.result(), reused=False)

        task.add_done_callback(connected)

    def _attach(self, ex: _Exchange, conn: UpstreamConnection, *, reused: bool) -> None:
        ex.upstream, ex.reused = conn, reused
        ex.parser = httptools.HttpResponseParser(ex)
        conn.owner = self
        conn.write(ex.upstream_head)
        self._pump_body(ex)
        if not self.writable:
            conn.pause_reading()
        ex.last_read = self.loop.time()
        timeout = self._ports().settings.proxy_read_timeout_s
        ex.timer = self.loop.call_later(timeout, self._check_timeout, ex, timeout)

    def _pump_body(self, ex: _Exchange) -> None:
        """Request body bytes held in the buffer go to the engine once it is connected."""
        if ex.body_left and self.buffer and ex.upstream is not None:
            n = min(ex.body_left, len(self.buffer))
            ex.upstream.write(bytes(self.buffer[:n]))
            del self.buffer[:n]
            ex.body_left -= n
        if len(self.buffer) <= BUFFERED_BYTES:
            self._resume_reading("buffer")

    def _check_timeout(self, ex: _Exchange, timeout: float) -> None:
        if ex is not self.exchange:
            return
        quiet = self.loop.time() - ex.last_read
        if quiet < timeout or not self.writable:  # a slow client is not a slow engine
            ex.timer = self.loop.call_later(timeout - quiet, self._check_timeout, ex, timeout)
        elif not ex.sent_head:
            self._fail(ex, 504, TIMEOUT)
        else:
            self._abort(ex)

    # --- engine side -----------------------------------------------------------------------------

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None:
        if conn is self.tunnel:
            if self.transport is not None:
                self.transport.write(data)
            self._touch(self.tunnel_instance)
            return
        ex = self.exchange
        if ex is None or ex.upstream is not conn or ex.parser is None:
            conn.close()
            return
        ex.answered = True
        ex.last_read = self.loop.time()
        try:
            ex.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(ex, conn, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            log.info("engine answer not relayed: %s", exc)
            if ex.done:  # garbage after a complete answer: the answer stands, the connection goes
                self._finish(ex, reuse=False)
            elif ex.sent_head:
                self._abort(ex)
            else:
                self._fail(ex, 502, BAD_ANSWER)
            return
        if ex.done and ex is self.exchange:
            self._finish(ex, reuse=_boundary_certain(ex))

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if conn is self.tunnel:
            self._live().discard(self.tunnel_token)
            self.tunnel = None
            if self.transport is not None:
                self.transport.close()
            return
        ex = self.exchange
        if ex is None or ex.upstream is not conn or ex.done:
            return
        if ex.sent_head and ex.close_delimited:
            self.response_done(ex)  # the engine's close ends a body of unknown length
            self._finish(ex, reuse=False)
        elif ex.sent_head:
            self._abort(ex)
        elif ex.reused and not ex.answered and not ex.retried and _retryable(ex):
            ex.retried = True  # a pooled connection the engine had closed: once more, fresh
            ex.upstream = None
            self._stop(ex)
            self._connect(self._ports(), ex)
        else:
            self._fail(ex, 502, CLOSED)

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self._pause_reading("upstream")
        else:
            self._resume_reading("upstream")

    def response_started(self, ex: _Exchange) -> None:
        assert ex.parser is not None and self.transport is not None
        status = ex.parser.get_status_code()
        headers = ex.response_headers
        ex.response_headers = []
        if status == 101:
            ex.status = 101  # the parser raises HttpParserUpgrade next: see _upgraded
            ex.response_headers = headers
            return
        if status < 200:
            ex.interim = True
            self.transport.write(response_head(status, downstream(headers)))
            return
        # Read now: once the message is complete the parser forgets its connection flags.
        ex.keep_alive = ex.parser.should_keep_alive()
        out = downstream(headers)
        no_body = ex.head.method == b"HEAD" or status in (204, 304)
        if not no_body and not any(name == b"content-length" for name, _ in out):
            ex.close_delimited = not any(
                name == b"transfer-encoding" and b"chunked" in value.lower()
                for name, value in headers
            )
            if ex.head.version == "1.1":
                ex.chunked_out = True
                out.append((b"transfer-encoding", b"chunked"))
            else:
                ex.close_after = True
        if ex.body_left:
            ex.early = True  # the engine may not have read the body it answered: never reused
        if ex.body_left or self.closing:
            ex.close_after = True  # the rest of the request body is never read
        if ex.close_after:
            out.append((b"connection", b"close"))
        self.transport.write(response_head(status, out))
        ex.sent_head, ex.status = True, status
        if ex.head.method == b"HEAD":
            ex.done = True  # nothing follows, whatever Content-Length says

    def response_body(self, ex: _Exchange, body: bytes) -> None:
        assert self.transport is not None
        if ex.chunked_out:
            self.transport.writelines(chunk(body))
        else:
            self.transport.write(body)

    def response_done(self, ex: _Exchange) -> None:
        if ex.done:
            return
        ex.done = True
        if ex.chunked_out and self.transport is not None:
            self.transport.write(LAST_CHUNK)

    def _upgraded(self, ex: _Exchange, conn: UpstreamConnection, rest: bytes) -> None:
        """The engine accepted the WebSocket: from here on, bytes both ways."""
        assert self.transport is not None
        if not ex.websocket or ex.status != 101:
            self._fail(ex, 502, BAD_ANSWER)  # a 101 nobody asked for
            return
        out = downstream(ex.response_headers, keep=UPGRADE_HEADERS)
        self.transport.write(response_head(101, out))
        ex.sent_head = ex.done = True
        self._stop(ex)
        self.exchange = None
        self._report(ex)
        self.tunnel, self.tunnel_instance = conn, ex.route.instance_id
        self.tunnel_token = self._live().add(
            self._ports(), ex.route.slug, ex.cookie, ex.prefix, self._revoked
        )
        if rest:
            self.transport.write(rest)
        if self.buffer:
            conn.write(bytes(self.buffer))
            self.buffer.clear()
        self._resume_reading("buffer")

    # --- ending ------------------------------------------------------------------------------

    def _finish(self, ex: _Exchange, *, reuse: bool) -> None:
        self._stop(ex)
        self.exchange = None
        conn = ex.upstream
        if conn is not None:
            if reuse and ex.route.upstream is not None:
                self._pool().give(ex.route.upstream, conn)
            else:
                conn.close()
        self._report(ex)
        if self.transport is None:
            return
        if ex.close_after or self.closing:
            self.transport.close()
            return
        self._resume_reading("upstream")
        self._next()

    def _fail(self, ex: _Exchange, status: int, text: str) -> None:
        """The engine failed before answering: the gateway answers instead."""
        assert self.transport is not None
        lang = negotiate(ex.head.cookie(b"lang"), _text(ex.head.one(b"accept-language")))
        content_type, body = error_body(status, text, ex.head.wants_html(), lang=lang)
        if ex.body_left or self.closing:
            ex.close_after = True
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if ex.close_after:
            headers.append((b"connection", b"close"))
        self.transport.write(response_head(status, headers) + body)
        ex.sent_head, ex.status, ex.done = True, status, True
        if ex.upstream is not None:
            ex.upstream.abort()
        ex.upstream = None
        ex.websocket = False  # reported as the HTTP answer it became
        self._finish(ex, reuse=False)

    def _abort(self, ex: _Exchange) -> None:
        """The engine failed mid-answer: the client's connection is closed (it sees the body
        cut short, as from the engine itself)."""
        self._stop(ex)
        self.exchange = None
        if ex.upstream is not None:
            ex.upstream.abort()
        self._report(ex)
        if self.transport is not None:
            self.transport.close()

    def _stop(self, ex: _Exchange) -> None:
        # The parser and the exchange refer to each other: dropping the link lets the exchange
        # go by reference counting. Cyclic garbage per request would leave it to the cycle
        # collector, whose pauses showed as the p99 latency in bench/proxy.
        ex.parser = None
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        if ex.connecting is not None:
            ex.connecting.cancel()
            ex.connecting = None

    def _report(self, ex: _Exchange) -> None:
        ports = self._ports()
        seconds = time.perf_counter() - ex.started
        if ex.websocket:
            ports.metrics.proxy_request("websocket", 101 if ex.status == 101 else 502, seconds)
        else:
            ports.metrics.proxy_request("http", ex.status, seconds)

    # --- small things ------------------------------------------------------------------------

    def _ports(self) -> ProxyPorts:
        ports: ProxyPorts = self.gateway_app.state.proxy_ports
        return ports

    def _revoked(self) -> None:
        """Access to the tunnelled WebSocket's instance ended: both sides are closed (the
        client sees the connection drop; the stream may be mid-frame, so no close frame)."""
        if self.tunnel is not None:
            self.tunnel.abort()
            self.tunnel = None
        if self.transport is not None:
            self.transport.abort()

    def _live(self) -> LiveSockets:
        live: LiveSockets = self.gateway_app.state.live_sockets
        return live

    def _pool(self) -> UpstreamPool:
        pool: UpstreamPool = self.gateway_app.state.engine_pool
        return pool

    def _touch(self, instance_id: str) -> None:
        self._ports().activity.touch(instance_id)

    def _idle_close(self) -> None:
        self.idle_timer = None
        if self.transport is not None and self.exchange is None and self.loading is None:
            self.transport.close()

    def _pause_reading(self, reason: str) -> None:
        if not self.paused_for and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused_for.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason not in self.paused_for:
            return
        self.paused_for.discard(reason)
        if not self.paused_for and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _boundary_certain(ex: _Exchange) -> bool:
    """Whether the engine connection's next bytes can only be the answer to the next request:
    the body was forwarded whole before the answer began, the answer was delimited by length or
    chunks and read to its end, nothing followed it, and the engine keeps the connection."""
    return ex.keep_alive and not (ex.body_left or ex.early or ex.excess or ex.close_delimited)


def _retryable(ex: _Exchange) -> bool:
    return ex.head.method in RETRYABLE and ex.head.length in (None, b"0")
