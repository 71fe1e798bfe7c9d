"""Usage figures shaped for the usage pages: months and days, cost per day, the idle-waste
ranking, budgets in words. Pure: fed the usage report's lines (anything with their fields)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from aigc_gateway.accounting.core import format_money
from aigc_gateway.dashboard.ui.charts import BarChart, Datum, horizontal, vertical
from aigc_gateway.dashboard.ui.i18n import Translator

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class Line(Protocol):
    """A usage report line (``api.usage.ReportLine``): sums over closed ledger rows."""

    @property
    def key(self) -> str | None: ...
    @property
    def label(self) -> str: ...
    @property
    def period(self) -> str | None: ...
    @property
    def seconds(self) -> int: ...
    @property
    def idle_seconds(self) -> int: ...
    @property
    def gpu_seconds(self) -> int: ...
    @property
    def cost_micros(self) -> int: ...


def hours(seconds: int) -> str:
    """Seconds as hours with two decimals: ``5400`` → ``"1.50"``."""
    return f"{seconds / 3600:.2f}"


def parse_month(text: str) -> str | None:
    """``"2026-11"`` stays; anything else (``"2026-13"``, ``"11/2026"``) is None."""
    return text if MONTH.match(text) else None


def month_bounds(month: str) -> tuple[date, date]:
    """The first and last day of a ``YYYY-MM`` month."""
    first = date.fromisoformat(f"{month}-01")
    return first, first_of_next(first) - timedelta(days=1)


def first_of_next(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def shift_month(month: str, by: int) -> str:
    """``"2026-12"``, ``1`` → ``"2027-01"``."""
    first = date.fromisoformat(f"{month}-01")
    n = first.year * 12 + first.month - 1 + by
    return f"{n // 12:04d}-{n % 12 + 1:02d}"


def days(first: date, last: date) -> list[str]:
    """Every UTC day label from ``first`` to ``last`` inclusive (none if ``last < first``)."""
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def cost_per_period(lines: Iterable[Line], periods: Sequence[str]) -> list[tuple[str, int]]:
    """Cost per period label, in the order of ``periods``, 0 where nothing was used; lines of
    other periods are left out."""
    cost = dict.fromkeys(periods, 0)
    for line in lines:
        if line.period in cost:
            cost[line.period] += line.cost_micros
    return [(p, cost[p]) for p in periods]


def day_data(items: Iterable[tuple[str, int]], currency: str) -> list[Datum]:
    """Chart data of ``(day, micro-units)``, in the given order, drawn as ``MM-DD``."""
    return [Datum(day, micros, format_money(micros, currency), day[5:]) for day, micros in items]


def daily_chart(
    lines: Iterable[Line], day_labels: Sequence[str], currency: str, title: str
) -> BarChart:
    """Cost per day as columns, one per day of ``day_labels`` (0 where nothing was used)."""
    return vertical(day_data(cost_per_period(lines, day_labels), currency), title=title)


def cost_data(
    lines: Iterable[Line],
    currency: str,
    *,
    none: str,
    hours_text: Callable[[str], str],
) -> list[Datum]:
    """Chart data of report lines by cost, highest first, labelled by the line's label (``none``
    for the line without a key: no team, no GPU); each bar's text is the cost and the hours
    (``hours_text("2.50")`` → ``"2.50 h"``, translated)."""
    named = [(line.label if line.key is not None else none, line) for line in lines]
    named.sort(key=lambda pair: (-pair[1].cost_micros, pair[0]))
    return [
        Datum(
            name,
            line.cost_micros,
            f"{format_money(line.cost_micros, currency)} · {hours_text(hours(line.seconds))}",
        )
        for name, line in named
    ]


def month_charts(
    t: Translator,
    *,
    teams: Iterable[Line],
    gpu_types: Iterable[Line],
    daily: Iterable[Line],
    days: Sequence[str],
    currency: str,
) -> dict[str, BarChart]:
    """The costs page's charts: cost by team and by GPU type (highest first), and per day."""

    def hours_text(h: str) -> str:
        return t("usage.hours_value", hours=h)

    return {
        "team": cost_chart(
            teams,
            title=t("admin.costs.chart_team"),
            none=t("admin.costs.no_team"),
            currency=currency,
            hours_text=hours_text,
        ),
        "gpu_type": cost_chart(
            gpu_types,
            title=t("admin.costs.chart_gpu_type"),
            none=t("admin.costs.no_gpu"),
            currency=currency,
            hours_text=hours_text,
        ),
        "day": daily_chart(daily, days, currency, t("admin.costs.chart_daily")),
    }


def cost_chart(
    lines: Iterable[Line],
    *,
    title: str,
    none: str,
    currency: str,
    hours_text: Callable[[str], str],
) -> BarChart:
    """Report lines as horizontal bars of cost, highest first (see :func:`cost_data`)."""
    return horizontal(cost_data(lines, currency, none=none, hours_text=hours_text), title=title)


@dataclass(frozen=True, slots=True)
class IdleRow:
    """An instance or user, by what it held without being used."""

    key: str | None
    label: str
    seconds: int
    idle_seconds: int
    idle_gpu_seconds: int
    """GPU-seconds held without proxy activity (whole GPUs; a share counts as 0)."""
    cost_micros: int
    idle_cost_micros: int
    """The idle part of the cost: ``cost * idle / seconds``."""

    @property
    def idle_percent(self) -> int:
        return round(100 * self.idle_seconds / self.seconds) if self.seconds > 0 else 0


def idle_part(amount: int, line: Line) -> int:
    """The share of ``amount`` that fell on idle time (0 for a line without time)."""
    return amount * line.idle_seconds // line.seconds if line.seconds > 0 else 0


def idle_row(line: Line) -> IdleRow:
    return IdleRow(
        key=line.key,
        label=line.label,
        seconds=line.seconds,
        idle_seconds=line.idle_seconds,
        idle_gpu_seconds=idle_part(line.gpu_seconds, line),
        cost_micros=line.cost_micros,
        idle_cost_micros=idle_part(line.cost_micros, line),
    )


def idle_ranking(lines: Iterable[Line], limit: int = 20) -> list[IdleRow]:
    """The lines with idle time, most idle GPU time first (then idle cost, idle time, label)."""
    rows = [idle_row(line) for line in lines if line.idle_seconds > 0]
    rows.sort(key=lambda r: (-r.idle_gpu_seconds, -r.idle_cost_micros, -r.idle_seconds, r.label))
    return rows[:limit]


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget with this month's spending, formatted (from ``accounting.services.budgets.BudgetStatus``)."""

    scope: str
    """``team`` or ``user``."""
    subject: str
    month: str
    spent: str
    soft: str | None
    hard: str | None
    pause_when_over: bool
    max_gpus: int | None
    over_soft: bool
    over_hard: bool
    percent: int | None
    """Spent, in percent of the hard limit (else the soft one); None without a positive limit."""

    @property
    def level(self) -> str:
        """``error`` past the hard limit, ``warning`` past the soft one, else ``ok``."""
        return "error" if self.over_hard else "warning" if self.over_soft else "ok"

    @property
    def limit(self) -> str:
        """The limit the banner names: the hard one once passed, else the soft one."""
        return (self.hard if self.over_hard else self.soft) or ""


class Budget(Protocol):
    """A budget's state (``accounting.services.budgets.BudgetStatus``)."""

    @property
    def scope(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def month(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def spent_micros(self) -> int: ...
    @property
    def soft_micros(self) -> int | None: ...
    @property
    def hard_micros(self) -> int | None: ...
    @property
    def pause_when_over(self) -> bool: ...
    @property
    def max_gpus(self) -> int | None: ...
    @property
    def over_soft(self) -> bool: ...
    @property
    def over_hard(self) -> bool: ...


def budget_view(b: Budget) -> BudgetView:
    def money(micros: int | None) -> str | None:
        return None if micros is None else format_money(micros, b.currency)

    limit = b.hard_micros or b.soft_micros
    return BudgetView(
        scope=b.scope,
        subject=b.subject,
        month=b.month,
        spent=format_money(b.spent_micros, b.currency),
        soft=money(b.soft_micros),
        hard=money(b.hard_micros),
        pause_when_over=b.pause_when_over,
        max_gpus=b.max_gpus,
        over_soft=b.over_soft,
        over_hard=b.over_hard,
        percent=max(0, min(100, round(100 * b.spent_micros / limit))) if limit else None,
    )
