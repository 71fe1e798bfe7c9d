"""Rounding a report once (issue 12, item 13): exact parts to whole units that still add up."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.accounting.core import apportion, apportion_within
from aigc_gateway.accounting.core.reports import round_once

parts_ms = st.lists(st.integers(0, 10**9), max_size=40)


@given(parts_ms, st.sampled_from([1, 1000, 360_000]))
def test_apportion_adds_up_to_the_total_rounded_once(parts: list[int], unit: int) -> None:
    out = apportion(parts, unit)
    assert sum(out) == round(Fraction(sum(parts), unit))  # the total, rounded once (half to even)
    for part, whole in zip(parts, out, strict=True):
        assert whole in (part // unit, part // unit + 1)  # each part is off by less than a unit


@given(st.lists(st.tuples(st.integers(0, 10**8), st.integers(0, 10**8)), max_size=40))
def test_active_time_never_exceeds_held_time(pairs: list[tuple[int, int]]) -> None:
    held_ms = [max(a, b) for a, b in pairs]
    active_ms = [min(a, b) for a, b in pairs]
    held = apportion(held_ms, 1000)
    active = apportion_within(active_ms, held, 1000)
    assert sum(active) == sum(apportion(active_ms, 1000))
    assert all(a <= h for a, h in zip(active, held, strict=True))


def test_short_intervals_are_not_lost_to_rounding() -> None:
    """The issue's run: 300 rows of about 0.385 s, rounded one by one, billed almost nothing."""
    rows = [(385, 0, 0, 10)] * 300  # (held ms, active ms, GPU ms, micro-units)
    lines = round_once(rows)
    assert sum(line[0] for line in lines) == 116  # 115.5 s, rounded once (half to even)
    assert sum(round(r[0] / 1000) for r in rows) == 0  # what per-row rounding gave


def test_apportion_gives_leftover_units_to_the_largest_remainders() -> None:
    assert apportion([1400, 1600, 1000], 1000) == [1, 2, 1]
    assert apportion([500, 500, 500, 500], 1000) == [1, 1, 0, 0]  # 2 s; ties to the first
    assert apportion([], 1000) == []
