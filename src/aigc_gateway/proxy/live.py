"""The long connections open through the gateway, and what happens to them when access changes.

Access is decided when a WebSocket opens (the handshake) or an event stream starts; afterwards it
is one long connection that no per-request check sees. So every open WebSocket and event stream
(``/api/instances/{id}/events/stream``, ``/_aigc/events``) is kept here with the access it was
opened with, and decided again whenever access changes on this gateway (sign-out, a revoked
session or token, a share taken back, a disabled user: the access cache's ``clear``) and every
``every_s`` seconds (changes made through another replica). One no longer allowed is closed: an
open connection is not a way around a revocation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aigc_gateway.auth.services.access_cache import Allowed
from aigc_gateway.proxy.asgi import decide_access
from aigc_gateway.proxy.ports import ProxyPorts

log = logging.getLogger(__name__)


StillAllowed = Callable[[], Awaitable[bool]]
"""Decides again whether an open connection's credential may still have it (reads the store;
the closure holds what it needs)."""


@dataclass(frozen=True, slots=True)
class _Live:
    allowed: StillAllowed
    close: Callable[[], None]


def instance_access(ports: ProxyPorts, slug: str, cookie: str, prefix: str | None) -> StillAllowed:
    """May the holder of ``cookie`` still use instance ``slug`` (the proxy's own decision)?"""

    async def allowed() -> bool:
        route = ports.routes.get(slug)
        return route is not None and isinstance(
            await decide_access(ports, route, cookie, prefix), Allowed
        )

    return allowed


class LiveSockets:
    """The open long connections (WebSockets and event streams), each with how to decide it."""

    def __init__(self) -> None:
        self._open: dict[int, _Live] = {}
        self._tokens = itertools.count(1)
        self._checking: asyncio.Task[None] | None = None
        self._again = False

    def add(
        self,
        ports: ProxyPorts,
        slug: str,
        cookie: str,
        prefix: str | None,
        close: Callable[[], None],
    ) -> int:
        """Keep a socket opened on ``(slug, cookie, prefix)``; ``close()`` ends it. Returns the
        token to ``discard`` it with when it ends by itself."""
        return self.watch(instance_access(ports, slug, cookie, prefix), close)

    def watch(self, allowed: StillAllowed, close: Callable[[], None]) -> int:
        """Keep an open connection that ``allowed()`` decides; ``close()`` (quick, no I/O) ends
        it once that answers False. Returns the token to ``discard`` it with when it ends."""
        token = next(self._tokens)
        self._open[token] = _Live(allowed, close)
        return token

    def discard(self, token: int) -> None:
        self._open.pop(token, None)

    def check_soon(self) -> None:
        """Decide every open connection again, in the background (one check at a time; a change
        during a check starts another after it)."""
        if not self._open:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a change made outside the server (a CLI command): nothing open
            return
        if self._checking is not None and not self._checking.done():
            self._again = True
            return
        self._checking = loop.create_task(self._check_until_settled())

    async def _check_until_settled(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.check()
            except Exception:  # the store may be unreachable: the next change or tick retries
                log.exception("checking open connections failed")
                return

    async def check(self) -> int:
        """Close the open connections whose access no longer holds; how many were closed."""
        closed = 0
        for token, live in list(self._open.items()):
            if not await live.allowed() and self._open.pop(token, None) is not None:
                live.close()
                closed += 1
        if closed:
            log.info("closed %d connection(s) whose access was revoked", closed)
        return closed

    async def every(self, every_s: float) -> None:
        """Check now and then (changes through another gateway replica); runs until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:
                log.exception("checking open connections failed")

    def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
        self._open.clear()
