"""The ledger in the store, on SQLite and a real PostgreSQL: recovery after a crash, midnight
cuts, activity minutes, immutability of closed rows, and report sums that always equal totals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select, text

from aigc_gateway.accounting.core import parse_pricebook
from aigc_gateway.store import usage
from aigc_gateway.store.db import Database, alembic_config
from aigc_gateway.store.tables import UsageInterval, UsageRollup
from aigc_gateway.store.usage import DIMENSIONS, Holding
from aigc_gateway.store.users import create_user

BOOK = parse_pricebook(
    "currency: USD\nprices:\n  - effective_from: 2026-01-01\n"
    "    gpu_hour: {rtx4090: 1.00, a100: 3.00}\n    share_gib_hour_default: 0.01\n"
    "    cpu_hour: 0.10\n",
    "test",
)
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    async with database.write() as s:
        for name in ("u1", "u2", "u3"):
            user = await create_user(s, name=name, password="pw")
            user.id = name  # readable ids for the tests
    yield database
    await database.close()


async def start(db: Database, iid: str, holding: Holding, at: datetime, user: str = "u1") -> None:
    async with db.write() as s:
        await usage.open_intervals(
            s,
            instance_id=iid,
            instance_name=iid,
            user_id=user,
            template_id="tpl",
            template_version="1",
            holdings=[holding],
            at=at,
            currency="USD",
        )


async def ledger(db: Database, iid: str) -> list[UsageInterval]:
    async with db.read() as s:
        return list(
            await s.scalars(
                select(UsageInterval)
                .where(UsageInterval.instance_id == iid)
                .order_by(UsageInterval.id)
            )
        )


async def test_a_crash_closes_at_the_last_observed_time_and_never_twice(db: Database) -> None:
    await start(db, "i1", Holding("gpu", "rtx4090", "onprem", 2), T0)
    await start(db, "i1", Holding("gpu", "rtx4090", "onprem", 2), T0 + timedelta(hours=1))
    assert len(await ledger(db, "i1")) == 1  # opening again is a no-op
    async with db.write() as s:
        await usage.observe(s, ["i1"], T0 + timedelta(minutes=42))
    # The gateway died; on recovery the engine is found gone with no exit time.
    async with db.write() as s:
        closed = await usage.close_intervals(s, "i1", end=None, pricebook=BOOK)
    assert [(r.duration_ms, r.cost_micros) for r in closed] == [(42 * 60_000, 1_400_000)]
    async with db.write() as s:  # retried close: nothing more
        assert (
            await usage.close_intervals(s, "i1", end=T0 + timedelta(hours=9), pricebook=BOOK) == []
        )
    (row,) = await ledger(db, "i1")
    assert row.end_at == T0 + timedelta(minutes=42) and row.closed_by == "stop"


async def test_midnight_cut_continues_in_a_new_row(db: Database) -> None:
    night = datetime(2026, 5, 4, 22, 0, tzinfo=UTC)
    await start(db, "i2", Holding("cpu"), night)
    async with db.write() as s:
        await usage.add_activity(s, {"i2": (night + timedelta(minutes=5)).timestamp()})
    async with db.write() as s:
        assert await usage.cut_at_midnight(s, night + timedelta(hours=1), BOOK) == 0
    async with db.write() as s:  # two days later (the gateway was down over a night)
        assert await usage.cut_at_midnight(s, night + timedelta(days=2), BOOK) == 1
    rows = await ledger(db, "i2")
    assert [(r.day, r.duration_ms, r.closed_by, r.end_at is None) for r in rows] == [
        ("2026-05-04", 7_200_000, "day", False),
        ("2026-05-05", 86_400_000, "day", False),
        ("2026-05-06", 0, None, True),
    ]
    assert rows[0].active_ms == 60_000 and rows[1].active_ms == 0
    assert sum(r.cost_micros for r in rows) == 2_600_000  # 26 h x 0.10


async def test_activity_counts_each_minute_once(db: Database) -> None:
    await start(db, "i3", Holding("cpu"), T0)
    for seconds in (0, 10, 59, 61, 61, 200):
        async with db.write() as s:
            await usage.add_activity(s, {"i3": (T0 + timedelta(seconds=seconds)).timestamp()})
    async with db.write() as s:
        (row,) = await usage.close_intervals(
            s, "i3", end=T0 + timedelta(minutes=10), pricebook=BOOK
        )
    assert row.active_ms == 3 * 60_000  # minutes 0, 1 and 3


async def test_closed_rows_are_never_changed(db: Database) -> None:
    await start(db, "i4", Holding("gpu_share", "a100", "cloud", share_gib=10), T0)
    async with db.write() as s:
        await usage.close_intervals(s, "i4", end=T0 + timedelta(hours=3), pricebook=BOOK)
    before = [(r.end_at, r.duration_ms, r.cost_micros) for r in await ledger(db, "i4")]
    async with db.write() as s:
        await usage.observe(s, ["i4"], T0 + timedelta(days=1))
        await usage.add_activity(s, {"i4": (T0 + timedelta(hours=1)).timestamp()})
        await usage.cut_at_midnight(s, T0 + timedelta(days=3), BOOK)
    assert [(r.end_at, r.duration_ms, r.cost_micros) for r in await ledger(db, "i4")] == before
    assert before == [(T0 + timedelta(hours=3), 10_800_000, 300_000)]


async def test_stored_data_is_billed_once_per_day(db: Database) -> None:
    book = parse_pricebook(
        "currency: USD\nprices:\n  - effective_from: 2026-01-01\n    storage_gib_month: 0.72\n",
        "test",
    )
    day = datetime(2026, 5, 4, tzinfo=UTC)
    data = [
        usage.StoredData("vol1", "u1", "comfyui", 10.0),
        usage.StoredData("vol2", "u2", "sd", 0.5),
    ]
    async with db.write() as s:
        assert await usage.record_storage(s, day, data, book) == 2
    async with db.write() as s:  # measured again the same day: nothing new
        assert await usage.record_storage(s, day, data, book) == 0
    (row,) = await ledger(db, "vol1")
    # 10 GiB x 0.72 per 720 h month x 24 h
    assert (row.resource, row.share_gib, row.duration_ms, row.cost_micros) == (
        "storage",
        10.0,
        0,
        240_000,
    )
    async with db.read() as s:
        (line,) = await usage.report(s, "resource", "day", user_id="u1")
    assert (line.key, line.period, line.duration_ms, line.cost_micros) == (
        "storage",
        "2026-05-04",
        0,
        240_000,
    )


async def test_stored_data_is_billed_from_when_the_volume_was_made(db: Database) -> None:
    """A volume made at 18:00 pays for the day's last 6 hours; one made the next day pays
    nothing for it. (On the old main both paid the whole day: a volume made today was billed
    for yesterday, the extra "<family> data" row the usage CSV test saw now and then.)"""
    book = parse_pricebook(
        "currency: USD\nprices:\n  - effective_from: 2026-01-01\n    storage_gib_month: 0.72\n",
        "test",
    )
    day = datetime(2026, 5, 4, tzinfo=UTC)
    data = [
        usage.StoredData("late", "u1", "comfyui", 10.0, since=day + timedelta(hours=18)),
        usage.StoredData("new", "u1", "sd", 10.0, since=(day + timedelta(days=1, hours=2))),
        usage.StoredData("naive", "u1", "jl", 10.0, since=datetime(2026, 5, 3, 12)),
    ]
    async with db.write() as s:
        assert await usage.record_storage(s, day, data, book) == 2
    (late,) = await ledger(db, "late")
    assert (late.start_at, late.cost_micros) == (day + timedelta(hours=18), 60_000)
    assert await ledger(db, "new") == []
    (whole,) = await ledger(db, "naive")  # made before the day (a naive UTC time): all of it
    assert whole.cost_micros == 240_000


holdings = st.sampled_from(
    [
        Holding("cpu"),
        Holding("gpu", "rtx4090", "onprem", 1),
        Holding("gpu", "a100", "cloud", 2),
        Holding("gpu_share", "a100", "cloud", share_gib=5),
    ]
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sessions=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3"]),
            holdings,
            st.integers(0, 60 * 24 * 20),  # start, minutes after T0
            st.integers(1, 60 * 40),  # length in minutes (some cross midnights)
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_every_report_adds_up_to_the_same_total(
    db: Database, sessions: list[tuple[str, Holding, int, int]]
) -> None:
    async with db.write() as s:
        await s.execute(UsageInterval.__table__.delete())
        await s.execute(UsageRollup.__table__.delete())
    expected_ms = 0
    for n, (user, holding, offset, length) in enumerate(sessions):
        iid = f"r{n}"
        begin = T0 + timedelta(minutes=offset)
        await start(db, iid, holding, begin, user)
        async with db.write() as s:
            await usage.close_intervals(
                s, iid, end=begin + timedelta(minutes=length), pricebook=BOOK
            )
        expected_ms += length * 60_000
    async with db.read() as s:
        whole = await usage.report(s, "resource")
        total = (sum(r.duration_ms for r in whole), sum(r.cost_micros for r in whole))
        assert total[0] == expected_ms
        for dim in DIMENSIONS:
            for period in (None, "day", "week", "month"):
                parts = await usage.report(s, dim, period)  # type: ignore[arg-type]
                assert (
                    sum(r.duration_ms for r in parts),
                    sum(r.cost_micros for r in parts),
                ) == total
            # The rollup answers whole-month reports with exactly the ledger's rows.
            for period in (None, "week", "month"):
                for since, until in ((None, None), ("2026-05-01", "2026-05-31")):
                    kw: dict[str, Any] = {"since": since, "until": until}
                    assert usage.rollup_covers(period, since, until)  # type: ignore[arg-type]
                    fast = await usage.report(s, dim, period, rollup=True, **kw)  # type: ignore[arg-type]
                    slow = await usage.report(s, dim, period, rollup=False, **kw)  # type: ignore[arg-type]
                    assert fast == slow
        one = await usage.report(s, "instance", "day", user_id="u2")
        assert all(r.key is not None for r in one)
        assert sum(r.duration_ms for r in one) == sum(
            length * 60_000 for user, _, _, length in sessions if user == "u2"
        )


async def test_many_short_intervals_keep_every_millisecond(db: Database) -> None:
    """Stops of 385 ms: rows rounded to whole seconds each came to 0 s in every report."""
    at = T0
    for n in range(120):
        await start(db, "short", Holding("gpu", "rtx4090", "onprem", 1), at)
        async with db.write() as s:
            await usage.close_intervals(
                s, "short", end=at + timedelta(milliseconds=385), pricebook=BOOK
            )
        at += timedelta(seconds=1, milliseconds=n % 7)
    rows = await ledger(db, "short")
    assert len(rows) == 120 and {r.duration_ms for r in rows} == {385}
    async with db.read() as s:
        for rollup in (False, True):
            (line,) = await usage.report(s, "instance", "month", rollup=rollup)
            assert (line.duration_ms, line.gpu_ms) == (46_200, 46_200)
            # 1 USD per GPU-hour: costs were always exact, per row (107 micro-units each).
            assert line.cost_micros == 120 * 107


async def test_the_migration_keeps_whole_seconds_as_milliseconds(database_url: str) -> None:
    """Rows and rollup rows written in whole seconds before the change read as exact
    milliseconds after it (and back, on a downgrade)."""
    database = Database(database_url)

    def to(revision: str, down: bool = False) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            move = command.downgrade if down else command.upgrade
            move(alembic_config(connection), revision)

        return run

    columns = (
        "instance_id, instance_name, user_id, template_id, template_version, resource, gpu_count,"
        " start_at, end_at, observed_at, day, week, month, cost_micros, currency"
    )
    values = (
        "'i', 'i', 'u', 't', '1', 'gpu', 2, '2026-05-04 10:00:00', '2026-05-04 10:00:42',"
        " '2026-05-04 10:00:42', '2026-05-04', '2026-W19', '2026-05', 0, 'USD'"
    )
    grain = "month, week, instance_id, instance_name, user_id, team_id, template_id, resource"
    try:
        async with database.write_engine.connect() as conn:
            await conn.run_sync(to("0005"))
            await conn.execute(
                text(
                    f"INSERT INTO usage_intervals ({columns}, seconds, active_s)"
                    f" VALUES ({values}, 42, 30)"
                )
            )
            await conn.execute(
                text(
                    f"INSERT INTO usage_rollup ({grain}, gpu_type, gpu_pool, seconds, active_s,"
                    " cost_micros, gpu_seconds) VALUES ('2026-05', '2026-W19', 'i', 'i', 'u', '',"
                    " 't', 'gpu', '', '', 42, 30, 0, 84)"
                )
            )
            await conn.run_sync(to("head"))
            row = (
                await conn.execute(text("SELECT duration_ms, active_ms FROM usage_intervals"))
            ).one()
            rolled = (
                await conn.execute(text("SELECT duration_ms, active_ms, gpu_ms FROM usage_rollup"))
            ).one()
            assert (tuple(row), tuple(rolled)) == ((42_000, 30_000), (42_000, 30_000, 84_000))
            await conn.run_sync(to("0005", down=True))
            back = (await conn.execute(text("SELECT seconds, active_s FROM usage_intervals"))).one()
            assert tuple(back) == (42, 30)
            await conn.commit()
    finally:
        await database.close()
