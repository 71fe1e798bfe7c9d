"""Event streams (Server-Sent Events) that end when their viewer's access does.

Both streams of instance events (``/api/instances/{id}/events/stream`` on the gateway and
``/_aigc/events`` on an instance host) register with the gateway's open connections
(:mod:`aigc_gateway.proxy.live`), the registry that closes WebSockets: when an access change
makes ``allowed`` answer False, an idle stream ends. And no event is sent across an access
change unchecked: before sending one, a stream that has seen the access cache cleared since it
last decided (its generation moved on) decides again, so an event published after a revocation
was answered never reaches the viewer it was taken from.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from starlette.requests import Request

from aigc_gateway.gateway import Gateway
from aigc_gateway.lifecycle.events import EventRecord
from aigc_gateway.proxy.live import LiveSockets, StillAllowed


@dataclass(slots=True)
class Watch:
    gw: Gateway
    allowed: StillAllowed
    generation: int
    """The access cache's generation when access was last decided."""
    revoked: asyncio.Event

    async def still(self) -> bool:
        """Whether the stream may go on; decided again if access changed since last asked."""
        current = self.gw.access_cache.generation
        if not self.revoked.is_set() and current != self.generation:
            self.generation = current
            if not await self.allowed():
                self.revoked.set()
        return not self.revoked.is_set()


@contextlib.contextmanager
def watched(request: Request, allowed: StillAllowed, *, generation: int) -> Iterator[Watch]:
    """While inside, the stream is registered with the open connections. ``generation`` is the
    access cache's, read before access was first decided."""
    live: LiveSockets = request.app.state.live_sockets
    watch = Watch(request.app.state.gateway, allowed, generation, asyncio.Event())
    token = live.watch(allowed, watch.revoked.set)
    try:
        yield watch
    finally:
        live.discard(token)


async def until_revoked(
    queue: asyncio.Queue[EventRecord], watch: Watch
) -> AsyncIterator[EventRecord]:
    """The records put in ``queue``, until access ends (even while waiting for one)."""
    while await watch.still():
        record = await _next(queue, watch.revoked)
        if record is None or not await watch.still():
            return
        yield record


async def _next(queue: asyncio.Queue[EventRecord], revoked: asyncio.Event) -> EventRecord | None:
    if not queue.empty():
        return queue.get_nowait()
    got = asyncio.ensure_future(queue.get())
    ended = asyncio.ensure_future(revoked.wait())
    try:
        await asyncio.wait({got, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (got, ended):
            task.cancel()
        await asyncio.gather(got, ended, return_exceptions=True)
    return got.result() if got.done() and not got.cancelled() else None
