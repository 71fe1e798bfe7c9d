"""A usage report's figures (pure): exact sums from the ledger, whole seconds rounded once.

Every figure is a sum of integers (milliseconds, micro-units of the currency), so the rows of a
report add up to its total exactly. Whole seconds are rounded once: the total is rounded and its
seconds handed to the rows by largest remainder (:func:`~aigc_gateway.accounting.apportion`), so
they still add up; hours and money are those integers divided for display.
"""

from __future__ import annotations

from pydantic import BaseModel

from aigc_gateway.accounting.core.pricebook import format_money
from aigc_gateway.accounting.core.rounding import apportion, apportion_within

__all__ = ["Exact", "Figures", "Report", "ReportLine", "round_once", "total_of"]


class Figures(BaseModel):
    milliseconds: int
    """Exact: the sum of the ledger rows' milliseconds."""
    active_milliseconds: int
    gpu_milliseconds: int
    seconds: int
    """Whole seconds, rounded once for the report (the rows' seconds add up to the total's)."""
    active_seconds: int
    idle_seconds: int
    """Held but unused: ``seconds - active_seconds``."""
    gpu_seconds: int
    hours: float
    active_hours: float
    idle_hours: float
    gpu_hours: float
    cost_micros: int
    cost: str
    """Formatted in the price book's currency, e.g. ``12.35 USD``."""

    @classmethod
    def of(cls, exact: Exact, rounded: Exact, currency: str) -> Figures:
        """From the exact sums (milliseconds, micro-units) and their seconds as rounded for the
        report."""
        ms, active_ms, gpu_ms, micros = exact
        seconds, active, gpu_s, _ = rounded
        return cls(
            milliseconds=ms,
            active_milliseconds=active_ms,
            gpu_milliseconds=gpu_ms,
            seconds=seconds,
            active_seconds=active,
            idle_seconds=seconds - active,
            gpu_seconds=gpu_s,
            hours=round(seconds / 3600, 4),
            active_hours=round(active / 3600, 4),
            idle_hours=round((seconds - active) / 3600, 4),
            gpu_hours=round(gpu_s / 3600, 4),
            cost_micros=micros,
            cost=format_money(micros, currency),
        )


Exact = tuple[int, int, int, int]
"""Held, active and GPU time (milliseconds or seconds) and cost (micro-units)."""


def round_once(exact: list[Exact]) -> list[Exact]:
    """The report's lines in whole seconds, adding up to the rounded total; a line's active
    seconds never exceed its held seconds."""
    held = apportion([e[0] for e in exact], 1000)
    active = apportion_within([e[1] for e in exact], held, 1000)
    gpu = apportion([e[2] for e in exact], 1000)
    return [(h, a, g, e[3]) for h, a, g, e in zip(held, active, gpu, exact, strict=True)]


def total_of(lines: list[Exact]) -> Exact:
    return (
        sum(x[0] for x in lines),
        sum(x[1] for x in lines),
        sum(x[2] for x in lines),
        sum(x[3] for x in lines),
    )


class ReportLine(Figures):
    key: str | None
    label: str
    period: str | None


class Report(BaseModel):
    by: str
    period: str | None
    since: str | None
    until: str | None
    scope: str
    currency: str
    rows: list[ReportLine]
    total: Figures
