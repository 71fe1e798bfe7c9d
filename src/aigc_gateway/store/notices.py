"""Notices between the gateway processes that share one database.

A change one process makes that the others hold in memory (a route, who may reach an instance, a
GPU freed, a kick for the process driving an instance) is announced as a :class:`Notice`. On
PostgreSQL, :class:`PostgresNotices` carries them with ``LISTEN``/``NOTIFY`` on one connection of
its own; the embedded SQLite serves one process, and :class:`LocalNotices` carries nothing.

Notices are hints, not the truth: the store is. A notice can be lost (the connection dropped); so
whenever the connection is (re)established, ``reconnected`` is called for the receiver to re-read
what it keeps from the store, and the controller's resync re-reads it periodically as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

__all__ = ["CHANNEL", "LocalNotices", "Notice", "Notices", "PostgresNotices", "notices_for"]

CHANNEL = "aigc_gateway"
RETRY_S = 1.0
"""How soon to reconnect after the notice connection failed or dropped."""


@dataclass(frozen=True, slots=True)
class Notice:
    topic: str
    """``route``, ``access``, ``kick``, ``gpus``: what changed (see lifecycle.cluster)."""
    subject: str = ""
    """What it is about (an instance id), or empty."""
    sender: str = ""
    """The announcing process (its lease holder name): a process ignores its own notices."""

    def payload(self) -> str:
        return f"{self.sender} {self.topic} {self.subject}".rstrip()

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        parts = payload.split(" ", 2)
        if len(parts) < 2:
            return None
        return cls(topic=parts[1], subject=parts[2] if len(parts) > 2 else "", sender=parts[0])


Deliver = Callable[[Notice], None]


class Notices(Protocol):
    """How this process tells the others, and hears them."""

    def announce(self, topic: str, subject: str = "") -> None:
        """Send a notice soon (never blocks; kept and sent after a reconnection if the
        connection is down)."""

    async def run(self, deliver: Deliver, reconnected: Callable[[], Awaitable[None]]) -> None:
        """Hear the other processes until cancelled: ``deliver`` each notice they send (not
        this process's own), and await ``reconnected`` each time the channel is (re)opened."""


class LocalNotices:
    """One process alone on its database: nothing to tell, nobody to hear."""

    def announce(self, topic: str, subject: str = "") -> None:
        return None

    async def run(self, deliver: Deliver, reconnected: Callable[[], Awaitable[None]]) -> None:
        await asyncio.Event().wait()


class PostgresNotices:
    """``LISTEN``/``NOTIFY`` on channel :data:`CHANNEL`, over a connection of its own."""

    def __init__(self, sqlalchemy_url: str, sender: str, *, retry_s: float = RETRY_S) -> None:
        url = make_url(sqlalchemy_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._sender = sender
        self._retry_s = retry_s
        self._pending: list[Notice] = []
        self._wake = asyncio.Event()

    def announce(self, topic: str, subject: str = "") -> None:
        notice = Notice(topic, subject, self._sender)
        if notice not in self._pending:  # one of each is enough: the receiver re-reads
            self._pending.append(notice)
        self._wake.set()

    async def run(self, deliver: Deliver, reconnected: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await self._session(deliver, reconnected)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "notice channel to the other gateways lost: %s; reconnecting in %.3g s",
                    type(exc).__name__,
                    self._retry_s,
                )
            await asyncio.sleep(self._retry_s)

    async def _session(self, deliver: Deliver, reconnected: Callable[[], Awaitable[None]]) -> None:
        conn: Any = await asyncpg.connect(self._dsn)
        lost = asyncio.Event()

        def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            notice = Notice.parse(payload)
            if notice is not None and notice.sender != self._sender:
                deliver(notice)

        def terminated(_conn: object) -> None:
            lost.set()
            self._wake.set()

        try:
            conn.add_termination_listener(terminated)
            await conn.add_listener(CHANNEL, heard)
            await reconnected()
            while not lost.is_set():
                while self._pending:
                    await conn.execute(
                        "SELECT pg_notify($1, $2)", CHANNEL, self._pending[0].payload()
                    )
                    self._pending.pop(0)  # sent: only now is it off the list
                self._wake.clear()
                if not self._pending:
                    await self._wake.wait()
            raise ConnectionError("the notice connection was closed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)


def notices_for(sqlalchemy_url: str, sender: str) -> Notices:
    """PostgreSQL notices on PostgreSQL; none on SQLite (one process per file)."""
    if sqlalchemy_url.startswith("sqlite"):
        return LocalNotices()
    return PostgresNotices(sqlalchemy_url, sender)
