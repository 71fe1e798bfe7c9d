"""A short-lived cache of "may this instance cookie use this instance?" answers.

The proxy would otherwise ask the store twice per request. Any change to access made through
this gateway (sign-out, disabled user, share revoked, password reset, …) clears the cache at once;
the TTL bounds how long another gateway replica's change can take to be seen.

Clearing wins over a lookup in flight: a load that began before a ``clear`` may have read the
store before the change, so its answer is handed to the requests that waited for it but never
stored (each ``clear`` moves a generation on; an answer is kept only if the generation it was
loaded in is still current).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Allowed:
    user_id: str
    user_name: str
    may_operate: bool
    """Whether this user may also start the instance (wake-on-request)."""
    is_admin: bool = False
    team_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    """401: sign in on this instance host; 403: not allowed."""


Decision = Allowed | Refused


class AccessCache:
    def __init__(self, ttl_s: float = 5.0, max_entries: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[tuple[str, str], tuple[float, Decision]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[Decision]] = {}
        self._on_clear: list[Callable[[], None]] = []
        self._generation = 0

    async def get_or_load(
        self, slug: str, cookie: str, load: Callable[[], Awaitable[Decision]]
    ) -> Decision:
        """The cached answer, or one ``load()`` shared by every request that asks meanwhile
        (when an answer expires under load, the store sees one query, not one per request)."""
        cached = self.get(slug, cookie)
        if cached is not None:
            return cached
        key = (slug, cookie)
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        generation = self._generation  # taken before the store is read
        try:
            decision = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            if self._loading.get(key) is future:
                del self._loading[key]
        if generation == self._generation:
            self.put(slug, cookie, decision)
        future.set_result(decision)
        return decision

    # The TTL runs on the monotonic clock on purpose: it is a timeout, not domain time (a test's
    # fake ledger clock must not keep or expire answers; a stepped wall clock must not either).

    def get(self, slug: str, cookie: str) -> Decision | None:
        hit = self._entries.get((slug, cookie))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, slug: str, cookie: str, decision: Decision) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[(slug, cookie)] = (time.monotonic() + self._ttl, decision)

    @property
    def generation(self) -> int:
        """Moves on at every ``clear``: a holder of an older answer knows access may have
        changed since."""
        return self._generation

    def clear(self) -> None:
        """Access changed: forget every answer (including those being loaded now, which may
        predate the change), and tell those who asked to know."""
        self._generation += 1
        self._entries.clear()
        self._loading.clear()  # a request from now on loads afresh instead of joining a stale load
        for listener in self._on_clear:
            listener()

    def on_clear(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (quick, non-blocking) whenever access changes."""
        self._on_clear.append(listener)
