"""Domain time: the one notion of "now" for the usage ledger, spending limits and reports.

The composition root (``aigc_gateway.gateway.open_gateway``) makes one ``Clock`` — the wall clock,
or a test's fake — and hands that same function to every part that reads domain time. Timeouts,
TTLs and latencies are not domain time: they keep ``time.monotonic`` / ``time.perf_counter``
where they are (a fake ledger clock must not stretch a connect timeout). Leases shared between
processes keep the real wall clock too (``lifecycle.cluster``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Now, as an aware UTC datetime."""


def wall_clock() -> datetime:
    """The real time (the production ``Clock``)."""
    return datetime.now(UTC)
