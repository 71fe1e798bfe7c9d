"""Rounding a report once: exact integer parts to display units that still add up.

The ledger keeps exact milliseconds; a report shows whole seconds. Rounding each part on its own
loses (or invents) up to half a unit per part, so the parts would no longer add up to the total.
:func:`apportion` rounds the total once and hands its units to the parts by the largest-remainder
method (Hamilton's): each part gets its floor, and the units left go to the largest remainders.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["apportion", "apportion_within"]


def _round_half_even(numerator: int, unit: int) -> int:
    q, r = divmod(numerator, unit)
    if 2 * r > unit or (2 * r == unit and q % 2 == 1):
        return q + 1
    return q


def apportion(parts: Sequence[int], unit: int) -> list[int]:
    """``parts`` (e.g. milliseconds) in whole ``unit``\\ s (e.g. 1000), adding up to the rounded
    total (half to even); each result is its part's floor or the next integer. Ties between equal
    remainders go to the earlier part, so the answer is deterministic."""
    if unit <= 0:
        raise ValueError("unit must be positive")
    floors = [p // unit for p in parts]
    left = _round_half_even(sum(parts), unit) - sum(floors)
    order = sorted(range(len(parts)), key=lambda i: (-(parts[i] % unit), i))
    out = list(floors)
    for i in order[:left]:
        out[i] += 1
    return out


def apportion_within(parts: Sequence[int], caps: Sequence[int], unit: int) -> list[int]:
    """:func:`apportion`, where part ``i`` is a share of something already rounded to
    ``caps[i]`` (active time within held time): a part rounded above its cap gives the unit to a
    part below its cap, so no part exceeds its cap and the total is unchanged. Needs
    ``parts[i] <= caps[i] * unit`` roughly, and ``sum(result) <= sum(caps)``."""
    out = apportion(parts, unit)
    room = [i for i in range(len(out)) if out[i] < caps[i]]
    for i in range(len(out)):
        while out[i] > caps[i] and room:
            j = room[-1]
            out[i] -= 1
            out[j] += 1
            if out[j] >= caps[j]:
                room.pop()
    return out
