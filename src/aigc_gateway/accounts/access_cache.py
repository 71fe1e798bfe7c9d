"""A short-lived cache of "may this instance cookie use this instance?" answers.

The proxy would otherwise ask the store twice per request. Any change to access made through
this gateway (sign-out, disabled user, share revoked, password reset, …) clears the cache at once;
the TTL bounds how long another gateway replica's change can take to be seen.
"""

from __future__ import annotations

import time
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

    def get(self, slug: str, cookie: str) -> Decision | None:
        hit = self._entries.get((slug, cookie))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, slug: str, cookie: str, decision: Decision) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[(slug, cookie)] = (time.monotonic() + self._ttl, decision)

    def clear(self) -> None:
        self._entries.clear()
