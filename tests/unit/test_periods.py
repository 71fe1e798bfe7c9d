"""Pure tests of UTC billing periods: boundaries, labels and cutting intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_gateway.accounting.core import (
    PERIODS,
    Period,
    next_period_start,
    period_label,
    period_start,
    split,
    split_at,
)

PLUS_TWO = timezone(timedelta(hours=2))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ("day", utc(2026, 11, 28)),
        ("week", utc(2026, 11, 23)),  # the Monday before Saturday 28 November
        ("month", utc(2026, 11, 1)),
    ],
)
def test_period_start(period: Period, expected: datetime) -> None:
    assert period_start(utc(2026, 11, 28, 17, 45, 3, 9), period) == expected


def test_period_start_uses_utc_not_the_given_zone() -> None:
    # 01:30 on 1 December in UTC+2 is still 30 November in UTC.
    ts = datetime(2026, 12, 1, 1, 30, tzinfo=PLUS_TWO)
    assert period_start(ts, "day") == utc(2026, 11, 30)
    assert period_start(ts, "month") == utc(2026, 11, 1)
    assert period_start(ts, "day").tzinfo is UTC


def test_a_monday_starts_its_own_week() -> None:
    assert period_start(utc(2026, 11, 23), "week") == utc(2026, 11, 23)
    assert period_start(utc(2026, 11, 22, 23, 59), "week") == utc(2026, 11, 16)


def test_next_period_start_rolls_over_the_year() -> None:
    assert next_period_start(utc(2026, 12, 31, 23), "month") == utc(2027, 1, 1)
    assert next_period_start(utc(2026, 12, 31, 23), "day") == utc(2027, 1, 1)
    assert next_period_start(utc(2026, 12, 31, 23), "week") == utc(2027, 1, 4)


@pytest.mark.parametrize(
    ("ts", "period", "label"),
    [
        (utc(2026, 11, 28, 12), "day", "2026-11-28"),
        (utc(2026, 11, 28, 12), "week", "2026-W48"),
        (utc(2026, 11, 28, 12), "month", "2026-11"),
        (utc(2024, 12, 30), "week", "2025-W01"),  # ISO week-numbering year, not calendar year
        (utc(2027, 1, 1), "week", "2026-W53"),
        (utc(2026, 3, 2), "week", "2026-W10"),
    ],
)
def test_period_label(ts: datetime, period: Period, label: str) -> None:
    assert period_label(ts, period) == label


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_start(datetime(2026, 1, 1), "day")
    with pytest.raises(ValueError, match="timezone-aware"):
        split(utc(2026, 1, 1), datetime(2026, 1, 2), "day")


def test_split_across_a_month_end() -> None:
    pieces = split(utc(2026, 1, 31, 20), utc(2026, 2, 1, 4), "month")
    assert pieces == [
        (utc(2026, 1, 31, 20), utc(2026, 2, 1)),
        (utc(2026, 2, 1), utc(2026, 2, 1, 4)),
    ]


def test_split_inside_one_period_is_one_piece() -> None:
    assert split(utc(2026, 5, 5, 1), utc(2026, 5, 5, 2), "day") == [
        (utc(2026, 5, 5, 1), utc(2026, 5, 5, 2))
    ]


def test_split_ending_on_a_boundary_has_no_empty_piece() -> None:
    assert split(utc(2026, 5, 4, 12), utc(2026, 5, 6), "day") == [
        (utc(2026, 5, 4, 12), utc(2026, 5, 5)),
        (utc(2026, 5, 5), utc(2026, 5, 6)),
    ]


def test_empty_and_backwards_intervals() -> None:
    assert split(utc(2026, 5, 5), utc(2026, 5, 5), "week") == []
    with pytest.raises(ValueError, match="before it starts"):
        split(utc(2026, 5, 5), utc(2026, 5, 4), "day")


def test_split_at_ignores_cuts_outside_on_the_ends_and_repeated() -> None:
    start, end = utc(2026, 1, 1), utc(2026, 1, 3)
    cuts = [utc(2026, 1, 2), utc(2025, 1, 1), start, end, utc(2026, 1, 2), utc(2027, 1, 1)]
    assert split_at(start, end, cuts) == [(start, utc(2026, 1, 2)), (utc(2026, 1, 2), end)]


def test_split_at_sorts_cuts_and_normalises_zones() -> None:
    start, end = utc(2026, 1, 1), utc(2026, 1, 1, 6)
    late, early = utc(2026, 1, 1, 4), datetime(2026, 1, 1, 4, tzinfo=PLUS_TWO)  # = 02:00 UTC
    pieces = split_at(start, end, [late, early])
    assert pieces == [(start, utc(2026, 1, 1, 2)), (utc(2026, 1, 1, 2), late), (late, end)]
    assert all(a.tzinfo is UTC and b.tzinfo is UTC for a, b in pieces)


instants = st.datetimes(
    min_value=datetime(2020, 1, 1),  # hypothesis wants naive bounds
    max_value=datetime(2030, 12, 31),
    timezones=st.sampled_from([UTC, PLUS_TWO, timezone(timedelta(hours=-9, minutes=-30))]),
)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=120))


@settings(max_examples=300, deadline=None, database=None)
@given(start=instants, length=durations, period=st.sampled_from(PERIODS))
def test_split_conserves_time_and_respects_periods(
    start: datetime, length: timedelta, period: Period
) -> None:
    end = start + length
    pieces = split(start, end, period)
    assert sum((b - a for a, b in pieces), timedelta(0)) == length
    if length:
        assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, b), (c, _) in pairwise(pieces):
        assert b == c  # contiguous
    for a, b in pieces:
        assert a < b
        assert b <= next_period_start(a, period)  # inside the period where it starts
        assert period_start(a, period) == period_start(b - timedelta(microseconds=1), period)
    assert bool(pieces) == bool(length)


@settings(max_examples=200, deadline=None, database=None)
@given(start=instants, length=durations, cuts=st.lists(instants, max_size=6))
def test_split_at_conserves_time_and_cuts_only_where_asked(
    start: datetime, length: timedelta, cuts: list[datetime]
) -> None:
    end = start + length
    pieces = split_at(start, end, cuts)
    assert sum((b - a for a, b in pieces), timedelta(0)) == length
    inner = {c for c in cuts if start < c < end}
    assert {b for _, b in pieces[:-1]} == inner
    for (_, b), (c, _) in pairwise(pieces):
        assert b == c
