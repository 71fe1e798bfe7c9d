"""Usage and cost: reports from the ledger (JSON and CSV), an instance's ledger rows, budgets.

Users see their own usage; administrators see everyone's (``scope=all``, the default for them).
Every figure is a sum of integers (milliseconds, micro-units of the currency), so the rows of a
report add up to its total exactly. Whole seconds are rounded once, here: the total is rounded and
its seconds handed to the rows by largest remainder (:func:`~aigc_gateway.accounting.apportion`),
so they still add up; hours and money are those integers divided for display
(:mod:`aigc_gateway.accounting.core.reports`; the query: :mod:`aigc_gateway.accounting.services.reports`).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field

from aigc_gateway.accounting.core import MICROS, format_money
from aigc_gateway.accounting.core.reports import Report
from aigc_gateway.accounting.services.budgets import BudgetStatus
from aigc_gateway.accounting.services.reports import Dimension, LedgerInterval, Period, Scope
from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep
from aigc_gateway.auth.core.principal import Principal, require_admin

router = APIRouter(prefix="/api", tags=["usage"])

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class IntervalPublic(BaseModel):
    id: int
    instance_id: str
    instance_name: str
    resource: str
    gpu_type: str | None
    gpu_pool: str | None
    gpu_count: int
    share_gib: float | None
    template_id: str
    template_version: str
    start_at: datetime
    end_at: datetime | None
    milliseconds: int
    """Exact (``end_at - start_at``); 0 while open."""
    seconds: float
    """``milliseconds / 1000``."""
    active_milliseconds: int
    cost_micros: int
    currency: str
    closed_by: str | None

    @classmethod
    def of(cls, r: LedgerInterval) -> IntervalPublic:
        return cls(
            id=r.id,
            instance_id=r.instance_id,
            instance_name=r.instance_name,
            resource=r.resource,
            gpu_type=r.gpu_type,
            gpu_pool=r.gpu_pool,
            gpu_count=r.gpu_count,
            share_gib=r.share_gib,
            template_id=r.template_id,
            template_version=r.template_version,
            start_at=r.start_at,
            end_at=r.end_at,
            milliseconds=r.duration_ms,
            seconds=r.duration_ms / 1000,
            active_milliseconds=r.active_ms,
            cost_micros=r.cost_micros,
            currency=r.currency,
            closed_by=r.closed_by,
        )


def _day(value: str | None, name: str) -> str | None:
    """``value`` if it is a real UTC day ``YYYY-MM-DD``; else a 422 naming the parameter, as
    for any other invalid query parameter (``2026-13-45`` has the shape but no such day)."""
    if value is None:
        return None
    try:
        if DAY.match(value):
            date.fromisoformat(value)
            return value
    except ValueError:
        pass
    raise RequestValidationError(
        [
            {
                "loc": ("query", name),
                "msg": f"must be a UTC day like 2026-11-28, not {value[:40]!r}",
                "type": "value_error",
            }
        ]
    )


async def build_report(
    gw: GatewayDep,
    who: Principal,
    by: Dimension,
    period: Period,
    since: str | None,
    until: str | None,
    scope: Scope | None,
) -> Report:
    """The report of :class:`~aigc_gateway.accounting.services.reports.UsageReports`, its days checked
    as query parameters (422 naming the one that is not a real day)."""
    first, last = _day(since, "since"), _day(until, "until")
    return await gw.reports.build(who, by, period, first, last, scope)


def report_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            report.by,
            "period",
            "hours",
            "active_hours",
            "idle_hours",
            "gpu_hours",
            f"cost_{report.currency}",
        ]
    )

    def money(micros: int) -> str:
        return str(Decimal(micros) / MICROS)

    for r in report.rows:
        writer.writerow(
            [
                r.label,
                r.period or "",
                r.hours,
                r.active_hours,
                r.idle_hours,
                r.gpu_hours,
                money(r.cost_micros),
            ]
        )
    t = report.total
    writer.writerow(
        ["TOTAL", "", t.hours, t.active_hours, t.idle_hours, t.gpu_hours, money(t.cost_micros)]
    )
    return out.getvalue()


@router.get("/usage/report", response_model=None)
async def get_report(
    gw: GatewayDep,
    who: CurrentUser,
    by: Annotated[Dimension, Query(description="what to group by")] = "user",
    period: Annotated[Literal["day", "week", "month", "none"], Query()] = "month",
    since: Annotated[str | None, Query(description="first UTC day, YYYY-MM-DD")] = None,
    until: Annotated[str | None, Query(description="last UTC day, YYYY-MM-DD")] = None,
    scope: Annotated[Literal["mine", "all"] | None, Query()] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Report | Response:
    """Hours (active and idle), GPU-hours and cost, grouped; ``format=csv`` downloads it."""
    report = await build_report(gw, who, by, period, since, until, scope)
    if format == "csv":
        name = f"usage-by-{by}-{report.period or 'all'}.csv"
        return Response(
            report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return report


@router.get("/instances/{instance_id}/usage")
async def instance_usage(
    instance_id: str, gw: GatewayDep, who: CurrentUser
) -> list[IntervalPublic]:
    """The instance's ledger rows, oldest first (open ones have no end yet): for the owner, a
    share, an admin."""
    return [IntervalPublic.of(r) for r in await gw.instances.usage(who, instance_id)]


# -- budgets ------------------------------------------------------------------------------------


class BudgetIn(BaseModel):
    soft: Decimal | None = Field(default=None, ge=0, description="monthly warning, in currency")
    hard: Decimal | None = Field(default=None, ge=0, description="monthly limit for new starts")
    pause_when_over: bool = False
    max_gpus: int | None = Field(default=None, ge=0, le=10_000)


class BudgetPublic(BaseModel):
    id: str
    scope: str
    subject: str
    month: str
    currency: str
    spent: str
    spent_micros: int
    soft_micros: int | None
    hard_micros: int | None
    pause_when_over: bool
    max_gpus: int | None
    over_soft: bool
    over_hard: bool

    @classmethod
    def of(cls, s: BudgetStatus) -> BudgetPublic:
        return cls(
            id=s.budget_id,
            scope=s.scope,
            subject=s.subject,
            month=s.month,
            currency=s.currency,
            spent=format_money(s.spent_micros, s.currency),
            spent_micros=s.spent_micros,
            soft_micros=s.soft_micros,
            hard_micros=s.hard_micros,
            pause_when_over=s.pause_when_over,
            max_gpus=s.max_gpus,
            over_soft=s.over_soft,
            over_hard=s.over_hard,
        )


@router.get("/budgets")
async def list_budgets(gw: GatewayDep, who: CurrentUser) -> list[BudgetPublic]:
    require_admin(who)
    return [BudgetPublic.of(s) for s in await gw.budgets.all()]


@router.put("/budgets/{scope}/{name}")
async def set_budget(
    scope: Literal["team", "user"],
    name: str,
    body: BudgetIn,
    gw: GatewayDep,
    who: CurrentUser,
    client: ClientDep,
) -> BudgetPublic:
    """Set a team's or user's monthly budget (replaces the previous one)."""
    status = await gw.budgets.set(
        who,
        scope,
        name,
        soft=body.soft,
        hard=body.hard,
        pause_when_over=body.pause_when_over,
        max_gpus=body.max_gpus,
        client=client,
    )
    return BudgetPublic.of(status)


@router.delete("/budgets/{scope}/{name}", status_code=204)
async def remove_budget(
    scope: Literal["team", "user"], name: str, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> None:
    await gw.budgets.remove(who, scope, name, client=client)


@router.get("/me/budgets")
async def my_budgets(gw: GatewayDep, who: CurrentUser) -> list[BudgetPublic]:
    """The budgets that apply to you (yours and your teams'), with this month's spending: the
    dashboard's banner."""
    return [BudgetPublic.of(s) for s in await gw.budgets.for_user(who.user_id)]
