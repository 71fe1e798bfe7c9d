"""The usage ledger in the store: open, observe, cut and close intervals; and the report query.

Every function runs inside the caller's transaction, so the ledger changes with the lifecycle
transition that causes it, or not at all. See :class:`~aigc_gateway.store.tables.UsageInterval`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    Table,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from aigc_gateway.accounting.core import MissingPrice, PriceBook, ResourceUse, period_label, split
from aigc_gateway.store.tables import (
    ROLLUP_GRAIN,
    Team,
    TeamMember,
    UsageInterval,
    UsageRollup,
    User,
)

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
                duration_ms=0,
                active_ms=0,
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


async def intervals_of(session: AsyncSession, instance_id: str) -> list[UsageInterval]:
    """Every ledger row of one instance, oldest first (open ones included)."""
    query = select(UsageInterval).where(UsageInterval.instance_id == instance_id)
    return list(await session.scalars(query.order_by(UsageInterval.id)))


def _holding(row: UsageInterval) -> Holding:
    return Holding(
        resource=row.resource,  # type: ignore[arg-type]
        gpu_type=row.gpu_type,
        gpu_pool=row.gpu_pool,
        gpu_count=row.gpu_count,
        share_gib=row.share_gib,
    )


def millis(start: datetime, end: datetime) -> int:
    """``end - start`` in whole milliseconds (half to even), never negative."""
    return max(0, round((end - start) / timedelta(milliseconds=1)))


def _finish(
    row: UsageInterval, end: datetime, pricebook: PriceBook, closed_by: str, active_ms: int
) -> None:
    row.end_at = end
    row.duration_ms = millis(row.start_at, end)
    row.active_ms = min(active_ms, row.duration_ms)
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
    await roll_up(session, closed)
    return closed


def _close_cut(
    session: AsyncSession, row: UsageInterval, end: datetime, pricebook: PriceBook, closed_by: str
) -> list[UsageInterval]:
    pieces = split(row.start_at, end, "day") or [(row.start_at, end)]
    active = row.active_ms
    out = []
    for n, (start, stop) in enumerate(pieces):
        last = n == len(pieces) - 1
        if n == 0:
            piece = row
        else:
            piece = _continuation(row, start)
            session.add(piece)
        share = min(active, millis(start, stop))
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
        duration_ms=0,
        active_ms=0,
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
    closed: list[UsageInterval] = []
    for row in list(rows):
        observed, minute = row.observed_at, row.last_active_minute
        closed.extend(_close_cut(session, row, midnight, pricebook, "day"))
        nxt = _continuation(row, midnight)
        nxt.observed_at = max(midnight, observed)
        nxt.last_active_minute = minute  # a minute counted before midnight is not counted again
        session.add(nxt)
        cut += 1
    await session.flush()
    await roll_up(session, closed)
    return cut


@dataclass(frozen=True, slots=True)
class StoredData:
    volume_id: str
    user_id: str
    family: str
    gib: float
    since: datetime | None = None
    """When the volume was made: a day is billed from then on only (``None``: all of it)."""


async def record_storage(
    session: AsyncSession, day_start: datetime, volumes: Iterable[StoredData], pricebook: PriceBook
) -> int:
    """Bill one UTC day of stored user data per volume (idempotent per volume and day), from
    the volume's ``since`` where that falls in the day; a volume made after the day is not
    billed for it.

    Storage rows carry the size in ``share_gib`` and cost only: their ``duration_ms`` is 0, so
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
    added: list[UsageInterval] = []
    for v in volumes:
        since = day_start if v.since is None else max(day_start, _aware(v.since))
        if v.volume_id in done or since >= end:
            continue
        team_id = await team_of(session, v.user_id)
        row = UsageInterval(
            instance_id=v.volume_id,
            instance_name=f"{v.family} data",
            user_id=v.user_id,
            team_id=team_id,
            template_id=v.family,
            template_version="",
            resource="storage",
            gpu_count=0,
            share_gib=round(v.gib, 3),
            start_at=since,
            end_at=end,
            observed_at=end,
            duration_ms=0,
            active_ms=0,
            cost_micros=pricebook.storage_cost_micros(round(v.gib, 3), since, end),
            currency=pricebook.currency,
            closed_by="storage",
            **_labels(day_start),
        )
        session.add(row)
        added.append(row)
    await session.flush()
    await roll_up(session, added)
    return len(added)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


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
            .values(active_ms=UsageInterval.active_ms + 60_000, last_active_minute=minute)
            .execution_options(synchronize_session=False)
        )


# -- the rollup --------------------------------------------------------------------------------


def _grain(row: UsageInterval) -> tuple[str, ...]:
    return tuple(str(getattr(row, c) or "") for c in ROLLUP_GRAIN)


async def roll_up(session: AsyncSession, closed: Iterable[UsageInterval]) -> None:
    """Add closed rows to the rollup (same transaction; rows close once, so adding is exact)."""
    sums: dict[tuple[str, ...], list[int]] = {}
    for row in closed:
        acc = sums.setdefault(_grain(row), [0, 0, 0, 0])
        acc[0] += row.duration_ms
        acc[1] += row.active_ms
        acc[2] += row.cost_micros
        acc[3] += row.duration_ms * row.gpu_count
    if not sums:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table: Table = UsageRollup.__table__  # type: ignore[assignment]
    for key, (ms, active, cost, gpu_ms) in sums.items():
        stmt = insert(table).values(
            **dict(zip(ROLLUP_GRAIN, key, strict=True)),
            duration_ms=ms,
            active_ms=active,
            cost_micros=cost,
            gpu_ms=gpu_ms,
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=list(ROLLUP_GRAIN),
                set_={
                    "duration_ms": table.c.duration_ms + stmt.excluded.duration_ms,
                    "active_ms": table.c.active_ms + stmt.excluded.active_ms,
                    "cost_micros": table.c.cost_micros + stmt.excluded.cost_micros,
                    "gpu_ms": table.c.gpu_ms + stmt.excluded.gpu_ms,
                },
            )
        )


async def rebuild_rollup(session: AsyncSession) -> int:
    """Recompute the rollup from the closed ledger rows (after a bulk import or a restore);
    returns the rollup's rows."""
    u = UsageInterval.__table__.c
    table: Table = UsageRollup.__table__  # type: ignore[assignment]
    keys = [
        func.coalesce(u[c], "") if u[c].nullable else u[c]  # "" for unknown, as in roll_up
        for c in ROLLUP_GRAIN
    ]
    await session.execute(table.delete())
    await session.execute(
        table.insert().from_select(
            [*ROLLUP_GRAIN, "duration_ms", "active_ms", "cost_micros", "gpu_ms"],
            select(
                *keys,
                func.sum(u.duration_ms),
                func.sum(u.active_ms),
                func.sum(u.cost_micros),
                func.sum(u.duration_ms * u.gpu_count),
            )
            .where(u.end_at.is_not(None))
            .group_by(*keys),
        )
    )
    return int(await session.scalar(select(func.count()).select_from(table)) or 0)


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
KEYS: dict[Dimension, str] = {
    "user": "user_id",
    "team": "team_id",
    "template": "template_id",
    "instance": "instance_id",
    "gpu_type": "gpu_type",
    "pool": "gpu_pool",
    "resource": "resource",
}
SCAN_DAYS = 62
"""Past this many days a report scans the ledger rather than walking an index over it."""


@dataclass(frozen=True, slots=True)
class ReportRow:
    key: str | None
    label: str
    period: str | None
    duration_ms: int
    active_ms: int
    cost_micros: int
    gpu_ms: int
    """Milliseconds times whole GPUs held (a share counts as 0)."""


class Unindexed(ColumnElement[Any]):
    """A column SQLite's planner must not use an index for (``+col``); the plain column on
    other databases. Without range statistics SQLite takes any day range for selective and walks
    an index over nearly the whole ledger, 3-4 times slower than scanning it."""

    inherit_cache = True
    _traverse_internals = [("col", InternalTraversal.dp_clauseelement)]

    def __init__(self, col: Any) -> None:
        self.col = col
        self.type = col.type


@compiles(Unindexed)
def _plain(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.col, **kw))


@compiles(Unindexed, "sqlite")
def _unindexed(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.col, **kw))


def _long(since: str | None, until: str | None) -> bool:
    if since is None:
        return True
    end = date.fromisoformat(until) if until else datetime.now(UTC).date()
    return (end - date.fromisoformat(since)).days > SCAN_DAYS


def rollup_covers(period: PeriodColumn | None, since: str | None, until: str | None) -> bool:
    """The rollup answers reports by week, month or none over whole months."""
    if period == "day" or (since and not since.endswith("-01")):
        return False
    return not until or (date.fromisoformat(until) + timedelta(days=1)).day == 1


def _bound(value: str) -> Any:
    # In the SQL text, not a bind parameter: PostgreSQL plans a prepared statement once for any
    # range after a few runs (a "generic plan" that takes a range for 0.5 % of the table), and
    # the days are checked against a strict pattern by the API.
    return literal(value, String, literal_execute=True)


def report_query(
    dim: Dimension,
    period: PeriodColumn | None,
    *,
    since: str | None,
    until: str | None,
    user_id: str | None,
    from_rollup: bool = False,
) -> Select[Any]:
    """Sums by ``dim`` (and ``period``) over UTC days ``since``..``until`` (inclusive);
    ``user_id`` limits it to one user's usage. Aggregated by the key alone, then joined to the
    names, with integer sums (milliseconds, micro-units), so the parts of a report add up to its
    total exactly."""
    src: Any = UsageRollup.__table__ if from_rollup else UsageInterval.__table__
    c = src.c
    scan = not from_rollup and _long(since, until)
    column: Any = c[KEYS[dim]]
    if column.nullable:
        # "" for unknown, as in the rollup: one order of rows on every database and source.
        column = func.coalesce(column, "")
    elif scan:
        column = Unindexed(column)
    key = column.label("key")
    group: list[Any] = [key]
    if dim == "instance":
        group.append(c.instance_name.label("name"))
    if period:
        group.append(c[period].label("period"))
    gpu_ms = c.gpu_ms if from_rollup else c.duration_ms * c.gpu_count
    sums = [
        cast(func.sum(x), BigInteger).label(n)
        for x, n in ((c.duration_ms, "s"), (c.active_ms, "a"), (c.cost_micros, "m"), (gpu_ms, "g"))
    ]
    inner = select(*group, *sums).group_by(*group)
    if from_rollup:
        if since:
            inner = inner.where(c.month >= _bound(since[:7]))
        if until:
            inner = inner.where(c.month <= _bound(until[:7]))
    else:
        day: Any = Unindexed(c.day) if scan else c.day
        inner = inner.where(c.end_at.is_not(None))
        if since:
            inner = inner.where(day >= _bound(since))
        if until:
            inner = inner.where(day <= _bound(until))
    if user_id:
        inner = inner.where(c.user_id == user_id)
    sub = inner.subquery()
    label: Any = sub.c.name if dim == "instance" else sub.c.key
    if dim == "user":
        label = User.name
    if dim == "team":
        label = Team.name
    query = select(sub.c.key, label, sub.c.period if period else null(), *sub.c[-4:])
    if dim == "user":
        query = query.join(User, User.id == sub.c.key)
    if dim == "team":
        query = query.outerjoin(Team, Team.id == sub.c.key)
    order = [sub.c.key, label] if dim == "instance" else [sub.c.key]
    return query.order_by(*order, *([sub.c.period] if period else []))


async def report(
    session: AsyncSession,
    dim: Dimension,
    period: PeriodColumn | None = None,
    *,
    since: str | None = None,
    until: str | None = None,
    user_id: str | None = None,
    rollup: bool = True,
) -> list[ReportRow]:
    """The report, from the rollup where it covers the range (``rollup=False``: always from
    the ledger, which gives the same rows)."""
    from_rollup = rollup and rollup_covers(period, since, until)
    query = report_query(
        dim, period, since=since, until=until, user_id=user_id, from_rollup=from_rollup
    )
    out = []
    for key, label, per, ms, active, cost, gpu_ms in await session.execute(query):
        out.append(
            ReportRow(
                key=key or None,
                label="" if label is None else str(label),
                period=per,
                duration_ms=int(ms or 0),
                active_ms=int(active or 0),
                cost_micros=int(cost or 0),
                gpu_ms=int(gpu_ms or 0),
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
