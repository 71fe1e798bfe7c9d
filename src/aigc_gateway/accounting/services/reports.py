"""Usage and cost reports from the ledger: the one query the REST API and the pages share.

Users see their own usage; administrators may ask for everyone's (``scope="all"``, their
default). The figures are exact sums rounded once (:mod:`aigc_gateway.accounting.core.reports`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from aigc_gateway.accounting.core.pricebook import PriceBook
from aigc_gateway.accounting.core.reports import Figures, Report, ReportLine, round_once, total_of
from aigc_gateway.auth.core.principal import Principal, require_admin
from aigc_gateway.store import usage
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import UsageInterval

__all__ = ["Dimension", "LedgerInterval", "Period", "Scope", "UsageReports"]

Dimension = usage.Dimension
Period = Literal["day", "week", "month", "none"]
Scope = Literal["mine", "all"]


@dataclass(frozen=True, slots=True)
class LedgerInterval:
    """One row of an instance's usage ledger, as it was recorded (exact integers)."""

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
    """None while the interval is open."""
    duration_ms: int
    """Exact (``end_at - start_at``); 0 while open."""
    active_ms: int
    cost_micros: int
    currency: str
    closed_by: str | None

    @classmethod
    def of(cls, row: UsageInterval) -> LedgerInterval:
        return cls(
            id=row.id,
            instance_id=row.instance_id,
            instance_name=row.instance_name,
            resource=row.resource,
            gpu_type=row.gpu_type,
            gpu_pool=row.gpu_pool,
            gpu_count=row.gpu_count,
            share_gib=row.share_gib,
            template_id=row.template_id,
            template_version=row.template_version,
            start_at=row.start_at,
            end_at=row.end_at,
            duration_ms=row.duration_ms,
            active_ms=row.active_ms,
            cost_micros=row.cost_micros,
            currency=row.currency,
            closed_by=row.closed_by,
        )


class UsageReports:
    def __init__(self, *, db: Database, pricebook: PriceBook) -> None:
        self._db = db
        self._pricebook = pricebook

    async def build(
        self,
        who: Principal,
        by: Dimension,
        period: Period,
        since: str | None,
        until: str | None,
        scope: Scope | None,
    ) -> Report:
        """Hours (active and idle), GPU-hours and cost grouped ``by`` and per ``period``, for
        the UTC days ``since``..``until`` (``YYYY-MM-DD``, already checked; ``None``: open).
        ``scope="all"`` needs an administrator."""
        effective = scope or ("all" if who.acts_as_admin else "mine")
        if effective == "all":
            require_admin(who)
        per: usage.PeriodColumn | None = None if period == "none" else period
        async with self._db.read() as session:
            rows = await usage.report(
                session,
                by,
                per,
                since=since,
                until=until,
                user_id=None if effective == "all" else who.user_id,
            )
        currency = self._pricebook.currency
        exact = [(r.duration_ms, r.active_ms, r.gpu_ms, r.cost_micros) for r in rows]
        rounded = round_once(exact)
        lines = [
            ReportLine(
                key=r.key,
                label=r.label or "(none)",
                period=r.period,
                **Figures.of(e, s, currency).__dict__,
            )
            for r, e, s in zip(rows, exact, rounded, strict=True)
        ]
        total = Figures.of(total_of(exact), total_of(rounded), currency)
        return Report(
            by=by,
            period=per,
            since=since,
            until=until,
            scope=effective,
            currency=currency,
            rows=lines,
            total=total,
        )
