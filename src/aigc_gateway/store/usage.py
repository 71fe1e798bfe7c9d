"""The usage ledger in the store: open, observe, cut and close intervals; and the report query.

Every function runs inside the caller's transaction, so the ledger changes with the lifecycle
transition that causes it, or not at all. See :class:`~aigc_gateway.store.tables.UsageInterval`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.accounting import MissingPrice, PriceBook, ResourceUse, period_label, split
from aigc_gateway.store.tables import Team, TeamMember, UsageInterval, User

log = logging.getLogger(__name__)

Resource = Literal["gpu", "gpu_share", "cpu", "storage"]


@dataclass(frozen=True, slots=True)
class Holding:
    """One kind of resource an instance holds while its engine may run."""

    resource: Resource
    gpu_type: str | None = None
    gpu_pool: str | None = None
    gpu_count: int = 0
    share_gib: float | None = None

    def use(self) -> ResourceUse:
        if self.resource == "gpu":
            return ResourceUse(kind="gpu", gpu_type=self.gpu_type, gpu_count=self.gpu_count)
        if self.resource == "gpu_share":
            return ResourceUse(kind="gpu_share", gpu_type=self.gpu_type, memory_gib=self.share_gib)
        return ResourceUse(kind="cpu")


def _labels(at: datetime) -> dict[str, str]:
    return {
        "day": period_label(at, "day"),
        "week": period_label(at, "week"),
        "month": period_label(at, "month"),
    }


async def team_of(session: AsyncSession, user_id: str) -> str | None:
    """The team a user's usage is charged to: the first of their teams by name."""
    return await session.scalar(
        select(Team.id)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.user_id == user_id)
        .order_by(Team.name)
        .limit(1)
    )


async def open_intervals(
    session: AsyncSession,
    *,
    instance_id: str,
    instance_name: str,
    user_id: str,
    template_id: str,
    template_version: str,
    holdings: Iterable[Holding],
    at: datetime,
    currency: str,
) -> None:
    """Start an interval per holding (idempotent: an instance with open rows gets no more)."""
    if await session.scalar(
        select(UsageInterval.id)
        .where(UsageInterval.instance_id == instance_id, UsageInterval.end_at.is_(None))
        .limit(1)
    ):
        return
    team_id = await team_of(session, user_id)
    for h in holdings:
        session.add(
            UsageInterval(
                instance_id=instance_id,
                instance_name=instance_name,
                user_id=user_id,
                team_id=team_id,
                template_id=template_id,
                template_version=template_version,
                resource=h.resource,
                gpu_type=h.gpu_type,
                gpu_pool=h.gpu_pool,
                gpu_count=h.gpu_count,
                share_gib=h.share_gib,
                start_at=at,
                end_at=None,
                observed_at=at,
                seconds=0,
                active_s=0,
                cost_micros=0,
                currency=currency,
                **_labels(at),
            )
        )
    await session.flush()


async def open_rows(session: AsyncSession, instance_id: str | None = None) -> list[UsageInterval]:
    query = select(UsageInterval).where(UsageInterval.end_at.is_(None))
    if instance_id is not None:
        query = query.where(UsageInterval.instance_id == instance_id)
    return list(await session.scalars(query.with_for_update().order_by(UsageInterval.id)))


def _holding(row: UsageInterval) -> Holding:
    return Holding(
        resource=row.resource,  # type: ignore[arg-type]
        gpu_type=row.gpu_type,
        gpu_pool=row.gpu_pool,
        gpu_count=row.gpu_count,
        share_gib=row.share_gib,
    )


def _finish(
    row: UsageInterval, end: datetime, pricebook: PriceBook, closed_by: str, active_s: int
) -> None:
    row.end_at = end
    row.seconds = max(0, round((end - row.start_at).total_seconds()))
    row.active_s = min(active_s, row.seconds)
    try:
        row.cost_micros = pricebook.cost_micros(_holding(row).use(), row.start_at, end)
    except MissingPrice as exc:
        # Never block an engine's stop on a price: the hours are recorded, the cost is 0,
        # and the error says which price to add (a correction row can bill it later).
        log.error("usage interval %s priced at 0: %s", row.id, exc.message)
        row.cost_micros = 0
    row.currency = pricebook.currency
    row.closed_by = closed_by


async def close_intervals(
    session: AsyncSession,
    instance_id: str,
    *,
    end: datetime | None,
    pricebook: PriceBook,
    closed_by: str = "stop",
) -> list[UsageInterval]:
    """Close the instance's open rows at ``end`` (None: at each row's last observed time, as
    after a crash), cutting at UTC midnights so every row lies in one day. Idempotent."""
    closed: list[UsageInterval] = []
    for row in await open_rows(session, instance_id):
        stop = max(row.start_at, row.observed_at if end is None else end)
        closed.extend(_close_cut(session, row, stop, pricebook, closed_by))
    await session.flush()
    return closed


def _close_cut(
    session: AsyncSession, row: UsageInterval, end: datetime, pricebook: PriceBook, closed_by: str
) -> list[UsageInterval]:
    pieces = split(row.start_at, end, "day") or [(row.start_at, end)]
    active = row.active_s
    out = []
    for n, (start, stop) in enumerate(pieces):
        last = n == len(pieces) - 1
        if n == 0:
            piece = row
        else:
            piece = _continuation(row, start)
            session.add(piece)
        share = min(active, round((stop - start).total_seconds()))
        active -= share
        _finish(piece, stop, pricebook, closed_by if last else "day", share)
        out.append(piece)
    return out


def _continuation(row: UsageInterval, start: datetime) -> UsageInterval:
    return UsageInterval(
        instance_id=row.instance_id,
        instance_name=row.instance_name,
        user_id=row.user_id,
        team_id=row.team_id,
        template_id=row.template_id,
        template_version=row.template_version,
        resource=row.resource,
        gpu_type=row.gpu_type,
        gpu_pool=row.gpu_pool,
        gpu_count=row.gpu_count,
        share_gib=row.share_gib,
        start_at=start,
        end_at=None,
        observed_at=max(start, row.observed_at),
        seconds=0,
        active_s=0,
        cost_micros=0,
        currency=row.currency,
        **_labels(start),
    )


async def cut_at_midnight(session: AsyncSession, now: datetime, pricebook: PriceBook) -> int:
    """Close open rows that began before today's UTC midnight at that midnight (and at any
    midnight between) and continue each in a new open row. Returns rows cut."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    cut = 0
    rows = await session.scalars(
        select(UsageInterval)
        .where(UsageInterval.end_at.is_(None), UsageInterval.start_at < midnight)
        .with_for_update()
    )
    for row in list(rows):
        observed, minute = row.observed_at, row.last_active_minute
        _close_cut(session, row, midnight, pricebook, "day")
        nxt = _continuation(row, midnight)
        nxt.observed_at = max(midnight, observed)
        nxt.last_active_minute = minute  # a minute counted before midnight is not counted again
        session.add(nxt)
        cut += 1
    await session.flush()
    return cut


@dataclass(frozen=True, slots=True)
class StoredData:
    volume_id: str
    user_id: str
    family: str
    gib: float


async def record_storage(
    session: AsyncSession, day_start: datetime, volumes: Iterable[StoredData], pricebook: PriceBook
) -> int:
    """Bill one UTC day of stored user data per volume (idempotent per volume and day).

    Storage rows carry the size in ``share_gib`` and cost only: their ``seconds`` are 0, so
    hours and idle time in reports stay about engines."""
    day = period_label(day_start, "day")
    done = set(
        await session.scalars(
            select(UsageInterval.instance_id).where(
                UsageInterval.resource == "storage", UsageInterval.day == day
            )
        )
    )
    end = day_start + timedelta(days=1)
    added = 0
    for v in volumes:
        if v.volume_id in done:
            continue
        team_id = await team_of(session, v.user_id)
        session.add(
            UsageInterval(
                instance_id=v.volume_id,
                instance_name=f"{v.family} data",
                user_id=v.user_id,
                team_id=team_id,
                template_id=v.family,
                template_version="",
                resource="storage",
                gpu_count=0,
                share_gib=round(v.gib, 3),
                start_at=day_start,
                end_at=end,
                observed_at=end,
                seconds=0,
                active_s=0,
                cost_micros=pricebook.storage_cost_micros(round(v.gib, 3), day_start, end),
                currency=pricebook.currency,
                closed_by="storage",
                **_labels(day_start),
            )
        )
        added += 1
    await session.flush()
    return added


async def observe(session: AsyncSession, instance_ids: Sequence[str], at: datetime) -> None:
    """Record that these instances' engines were seen alive at ``at``."""
    if instance_ids:
        await session.execute(
            update(UsageInterval)
            .where(UsageInterval.end_at.is_(None), UsageInterval.instance_id.in_(instance_ids))
            .values(observed_at=at)
            .execution_options(synchronize_session=False)
        )


async def add_activity(session: AsyncSession, last: dict[str, float]) -> None:
    """Count the minute of each instance's latest proxied activity on its open rows (once)."""
    for instance_id, at in last.items():
        minute = int(at // 60)
        await session.execute(
            update(UsageInterval)
            .where(
                UsageInterval.instance_id == instance_id,
                UsageInterval.end_at.is_(None),
                or_(
                    UsageInterval.last_active_minute.is_(None),
                    UsageInterval.last_active_minute < minute,
                ),
            )
            .values(active_s=UsageInterval.active_s + 60, last_active_minute=minute)
            .execution_options(synchronize_session=False)
        )


# -- reports -----------------------------------------------------------------------------------

Dimension = Literal["user", "team", "template", "instance", "gpu_type", "pool", "resource"]
DIMENSIONS: tuple[Dimension, ...] = (
    "user",
    "team",
    "template",
    "instance",
    "gpu_type",
    "pool",
    "resource",
)
PeriodColumn = Literal["day", "week", "month"]


@dataclass(frozen=True, slots=True)
class ReportRow:
    key: str | None
    label: str
    period: str | None
    seconds: int
    active_s: int
    cost_micros: int
    gpu_seconds: int
    """Seconds times whole GPUs held (a share counts as 0)."""


def _dimension(dim: Dimension) -> tuple[Any, Any]:
    u = UsageInterval
    columns: dict[Dimension, tuple[Any, Any]] = {
        "user": (u.user_id, User.name),
        "team": (u.team_id, Team.name),
        "template": (u.template_id, u.template_id),
        "instance": (u.instance_id, u.instance_name),
        "gpu_type": (u.gpu_type, u.gpu_type),
        "pool": (u.gpu_pool, u.gpu_pool),
        "resource": (u.resource, u.resource),
    }
    return columns[dim]


def report_query(
    dim: Dimension,
    period: PeriodColumn | None,
    *,
    since: str | None,
    until: str | None,
    user_id: str | None,
) -> Select[Any]:
    """Sums of closed rows by ``dim`` (and ``period``) over UTC days ``since``..``until``
    (``YYYY-MM-DD``, inclusive); ``user_id`` limits it to one user's usage. Every sum is of
    integers, so the parts of a report add up to its total exactly."""
    u = UsageInterval
    key, label = _dimension(dim)
    group: list[Any] = [key, label] if label is not key else [key]
    if period:
        group.append(getattr(u, period))
    query: Select[Any] = select(
        *group,
        func.sum(u.seconds),
        func.sum(u.active_s),
        func.sum(u.cost_micros),
        func.sum(u.seconds * u.gpu_count),
    ).where(u.end_at.is_not(None))
    if dim == "user":
        query = query.join(User, User.id == u.user_id)
    if dim == "team":
        query = query.outerjoin(Team, Team.id == u.team_id)
    if since:
        query = query.where(u.day >= since)
    if until:
        query = query.where(u.day <= until)
    if user_id:
        query = query.where(u.user_id == user_id)
    return query.group_by(*group).order_by(*group)


async def report(
    session: AsyncSession,
    dim: Dimension,
    period: PeriodColumn | None = None,
    *,
    since: str | None = None,
    until: str | None = None,
    user_id: str | None = None,
) -> list[ReportRow]:
    query = report_query(dim, period, since=since, until=until, user_id=user_id)
    same_label = _dimension(dim)[0] is _dimension(dim)[1]
    out = []
    for r in await session.execute(query):
        values = list(r)
        key = values.pop(0)
        label = key if same_label else values.pop(0)
        per = values.pop(0) if period else None
        seconds, active, cost, gpu_s = values
        out.append(
            ReportRow(
                key=key,
                label="" if label is None else str(label),
                period=per,
                seconds=int(seconds or 0),
                active_s=int(active or 0),
                cost_micros=int(cost or 0),
                gpu_seconds=int(gpu_s or 0),
            )
        )
    return out


async def month_spend(
    session: AsyncSession,
    month: str,
    *,
    user_id: str | None = None,
    team_id: str | None = None,
    now: datetime,
    pricebook: PriceBook,
) -> int:
    """What a user or team spent in ``month`` (``YYYY-MM``), closed rows plus what open rows
    have cost so far."""
    u = UsageInterval
    where = [u.month == month]
    if user_id is not None:
        where.append(u.user_id == user_id)
    if team_id is not None:
        where.append(u.team_id == team_id)
    closed = await session.scalar(
        select(func.sum(u.cost_micros)).where(*where, u.end_at.is_not(None))
    )
    total = int(closed or 0)
    for row in await session.scalars(select(u).where(*where, u.end_at.is_(None))):
        try:
            total += pricebook.cost_micros(
                _holding(row).use(), row.start_at, max(now, row.start_at)
            )
        except MissingPrice:
            continue
    return total


def month_of(at: datetime) -> str:
    return period_label(at, "month")


def since_days(now: datetime, days: int) -> str:
    return period_label(now - timedelta(days=days), "day")
