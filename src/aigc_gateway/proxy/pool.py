"""Pooled HTTP/1.1 connections to engines, for the connection-level proxy (``front.py``).

A connection belongs to one exchange at a time (its ``owner``) and goes back to the pool, per
engine address, only when the boundary of the engine's answer is certain (``front.py``'s
``_boundary_certain``: the request body forwarded whole before the answer began, the answer
delimited by length or chunks and read to its end, nothing after it, both sides keeping the
connection): whatever the engine sends next can then only answer the next request. Idle
connections are closed after ``idle_s``; one that the engine closes, or that says anything,
while idle is dropped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.runtime.connect import open_stream
from aigc_gateway.runtime.relay import RelayKey


class Owner(Protocol):
    """Who receives a connection's events while it is lent out."""

    def upstream_data(self, conn: UpstreamConnection, data: bytes) -> None: ...

    def upstream_lost(self, conn: UpstreamConnection) -> None: ...

    def upstream_paused(self, paused: bool) -> None:
        """The engine's socket is (or is no longer) full: stop (resume) reading the client."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an engine (TCP or a Unix socket); its events go to ``owner`` (None
    while idle)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:  # nobody asked: an idle connection that talks is not reusable
            self.close()
            return
        owner.upstream_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.owner is not None:
            self.owner.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(False)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after what was written is sent."""
        self.owner = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once (the exchange it carried is abandoned)."""
        self.owner = None
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle connections per engine address, and new ones (``relay_key``: the cluster's relay
    key, for engines on other nodes)."""

    def __init__(
        self,
        *,
        relay_key: RelayKey | None = None,
        idle_s: float = 30.0,
        max_idle_per_engine: int = 256,
    ) -> None:
        self._relay_key = relay_key
        self._idle_s = idle_s
        self._max_idle = max_idle_per_engine
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, address: str) -> UpstreamConnection | None:
        """An idle connection to ``address`` (an endpoint's text: ``host:port``, ``unix:/path``
        or ``relay:host:port/<id>``), the most recently used first."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give(self, address: str, conn: UpstreamConnection) -> None:
        """Back to the pool: the exchange on it is complete."""
        conn.owner = None
        if conn.closed:
            return
        idle = self._idle.setdefault(address, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._idle_s / 2, self._sweep)

    async def connect(self, endpoint: Endpoint, timeout_s: float) -> UpstreamConnection:
        """A new connection (OSError or TimeoutError when the engine cannot be reached)."""
        return await open_stream(endpoint, UpstreamConnection, timeout_s, relay_key=self._relay_key)

    def _sweep(self) -> None:
        self._sweeper = None
        horizon = time.monotonic() - self._idle_s
        for address, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed:
                    continue
                if conn.idle_since < horizon:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._idle_s / 2, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
