"""Billing periods in UTC: where a day, an ISO week or a month starts, and cutting intervals there.

Pure: no I/O, no clock. Every function takes and returns timezone-aware datetimes, converted to UTC;
a naive datetime is a programming error (``ValueError``), because guessing its zone would move money
between periods.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal, get_args

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = get_args(Period)


def as_utc(ts: datetime, *, name: str = "timestamp") -> datetime:
    """Return ``ts`` converted to UTC; ``ValueError`` if it is naive (has no time zone)."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {ts.isoformat()}")
    return ts.astimezone(UTC)


def period_start(ts: datetime, period: Period) -> datetime:
    """The start (UTC) of the ``period`` containing ``ts``.

    A day starts at 00:00 UTC, a week on Monday 00:00 UTC (ISO 8601), a month on its 1st 00:00 UTC.
    """
    midnight = as_utc(ts).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight
    if period == "week":
        return midnight - timedelta(days=midnight.weekday())
    if period == "month":
        return midnight.replace(day=1)
    raise ValueError(f"unknown period {period!r}; expected one of {PERIODS}")


def next_period_start(ts: datetime, period: Period) -> datetime:
    """The start of the period after the one containing ``ts``."""
    start = period_start(ts, period)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def split_at(
    start: datetime, end: datetime, cuts: Iterable[datetime]
) -> list[tuple[datetime, datetime]]:
    """Cut ``[start, end)`` at every cut strictly inside it; the pieces are contiguous, in order.

    Cuts outside the interval, on its ends or repeated are ignored. An empty interval
    (``start == end``) gives no pieces; ``end < start`` is a ``ValueError``.
    """
    start, end = as_utc(start, name="start"), as_utc(end, name="end")
    if end < start:
        raise ValueError(
            f"interval ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    inside = sorted({c for c in (as_utc(c, name="cut") for c in cuts) if start < c < end})
    return [(a, b) for a, b in pairwise([start, *inside, end]) if a < b]


def split(start: datetime, end: datetime, period: Period) -> list[tuple[datetime, datetime]]:
    """Cut ``[start, end)`` at ``period`` boundaries: each piece lies inside one period."""
    start, end = as_utc(start, name="start"), as_utc(end, name="end")
    cuts: list[datetime] = []
    boundary = next_period_start(start, period)
    while boundary < end:
        cuts.append(boundary)
        boundary = next_period_start(boundary, period)
    return split_at(start, end, cuts)


def period_label(start: datetime, period: Period) -> str:
    """A short stable name for the period containing ``start``.

    ``"2026-11-28"`` for a day, ``"2026-W48"`` for a week (ISO week-numbering year, so
    2024-12-30 is in ``"2025-W01"``), ``"2026-11"`` for a month.
    """
    first = period_start(start, period)
    if period == "day":
        return first.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return first.strftime("%Y-%m")
