"""bench/accounting: usage reports over one year of ledger, on SQLite and PostgreSQL.

Goal (issue 7): with a year of ``usage_intervals`` for 2,000 users (40 teams) and 5,000 instances
(about 1.2 M rows, see ledger.py), every typical report through
``aigc_gateway.store.usage.report`` answers in under 1 s on both backends. Each report is timed
best of ``--runs`` after one warm-up (five on PostgreSQL: asyncpg prepares every statement, and
from its sixth run PostgreSQL may switch it to a generic plan, which is what the gateway then
gets), in a fresh read session, as the API runs it. Baseline in the same run, per backend and
pass: a full scan ``SELECT count(*), sum(cost_micros) FROM usage_intervals``; each figure prints
its ratio to it. Also timed: ``usage.month_spend`` for a
user and a team (the budget check at every start). Loading (one executemany transaction on
SQLite, COPY on PostgreSQL, then VACUUM ANALYZE as autovacuum would) is not measured.
PostgreSQL is a throwaway server from tests/support/pg.py (``scripts/system-deps.sh``).

Passes, on the same database, in order (both must give the same rows, or the run fails):
  ledger     ``usage.report(..., rollup=False)``: every report from the ledger itself;
  gateway    ``usage.report``: what the gateway runs, reading the month x week rollup
             (``usage_rollup``, kept by the gateway as rows close; rebuilt here after the bulk
             load with ``usage.rebuild_rollup``) for reports by week, month or none over whole
             months, and the ledger for the rest (the figures of the issue).
Plans (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN ANALYZE of the prepared statement under
its generic plan) are printed for reports over the goal, or all with ``--explain``.

    .venv/bin/python bench/accounting/run.py                # full size, about 6 min on 2 cores
    .venv/bin/python bench/accounting/run.py --scale 0.05   # a quick small run

Last line: one JSON object of the figures (``report_s_*``: the slowest report of the gateway
pass; ``report_s_*_ledger``: of the ledger-only pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Select, insert, select, text

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "accounting"))

from ledger import COLUMNS, World, ledger_rows, make_world  # noqa: E402
from tests.support.pg import pg_bin, postgres_server  # noqa: E402

from aigc_gateway.accounting.core import PriceBook  # noqa: E402
from aigc_gateway.store import usage  # noqa: E402
from aigc_gateway.store.db import Database  # noqa: E402
from aigc_gateway.store.tables import Team, TeamMember, UsageInterval, User  # noqa: E402

GOAL_S = 1.0
SEED = 7
YEAR = ("2025-12-01", "2026-11-30")


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    dim: usage.Dimension
    period: usage.PeriodColumn | None
    since: str | None
    until: str | None
    mine: bool = False
    """Limited to one user (the one with the most rows): "My usage"."""


CASES = (
    Case("year: team x month", "team", "month", *YEAR),
    Case("year: user", "user", None, *YEAR),
    Case("June: instance x day", "instance", "day", "2026-06-01", "2026-06-30"),
    Case("year: gpu_type x week", "gpu_type", "week", *YEAR),
    Case("year: template x month", "template", "month", *YEAR),
    Case("my year: instance x day", "instance", "day", *YEAR, mine=True),
    Case("my usage: day, no range", "user", "day", None, None, mine=True),
)
SPEND_MONTH = "2026-11"


# -- loading -----------------------------------------------------------------------------------


async def seed_people(db: Database, world: World) -> None:
    now = datetime(2025, 11, 1, tzinfo=UTC)
    people = [
        {"id": p.id, "name": p.name, "display_name": p.name.title(), "is_admin": False,
         "disabled": False, "created_at": now}
        for p in world.users
    ]  # fmt: skip
    async with db.write() as s:
        teams = [{"id": tid, "name": name, "created_at": now} for tid, name in world.teams]
        await s.execute(insert(Team), teams)
        await s.execute(insert(User), people)
        members = [{"team_id": p.team_id, "user_id": p.id} for p in world.users if p.team_id]
        await s.execute(insert(TeamMember), members)


def sqlite_stamp(at: datetime) -> str:
    """How SQLAlchemy stores a UTC datetime in SQLite."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def load_sqlite(path: Path, world: World) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        marks = ", ".join("?" * len(COLUMNS))
        sql = f"INSERT INTO usage_intervals ({', '.join(COLUMNS)}) VALUES ({marks})"
        rows = conn.executemany(sql, ledger_rows(world, seed=SEED, stamp=sqlite_stamp)).rowcount
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return rows


async def load_postgres(dsn: str, world: World) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        rows = list(ledger_rows(world, seed=SEED, stamp=lambda at: at))
        await conn.copy_records_to_table("usage_intervals", records=rows, columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE usage_intervals")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return len(rows)


async def create_database(base: str, name: str) -> str:
    conn = await asyncpg.connect(base.replace("postgresql+asyncpg", "postgresql") + "/postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return f"{base}/{name}"


# -- measuring ---------------------------------------------------------------------------------

Report = Callable[..., Awaitable[list[usage.ReportRow]]]
Query = Callable[..., Select[Any]]


@dataclass(frozen=True, slots=True)
class Pass:
    name: str
    report: Report
    query: Query
    setup: list[str] = field(default_factory=list)


async def best_of(
    runs: int, job: Callable[[], Awaitable[Any]], warm_up: int = 1
) -> tuple[float, Any]:
    """The best time of ``runs`` after ``warm_up`` runs, and the answer."""
    for _ in range(warm_up):
        answer = await job()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = await job()
        times.append(time.perf_counter() - started)
    return min(times), answer


@dataclass(frozen=True, slots=True)
class Subjects:
    """The user and the team with the most rows."""

    user_id: str
    team_id: str


@dataclass(slots=True)
class Backend:
    name: str
    db: Database
    who: Subjects

    @property
    def warm_up(self) -> int:
        """PostgreSQL plans a prepared statement once for all parameters (a generic plan) from
        its sixth run on, if that looks no dearer; the gateway runs on then, so time that."""
        return 1 if self.db.is_sqlite else 5

    async def scalar(self, sql: str) -> Any:
        async with self.db.read() as s:
            return (await s.execute(text(sql))).scalar()

    async def execute(self, sql: str) -> None:
        async with self.db.write() as s:
            await s.execute(text(sql))

    def args(self, case: Case) -> dict[str, Any]:
        user = self.who.user_id if case.mine else None
        return {"since": case.since, "until": case.until, "user_id": user}

    def job(self, p: Pass, case: Case) -> Callable[[], Awaitable[list[usage.ReportRow]]]:
        async def run() -> list[usage.ReportRow]:
            async with self.db.read() as s:
                return await p.report(s, case.dim, case.period, **self.args(case))

        return run

    def spend(self, **subject: str) -> Callable[[], Awaitable[int]]:
        now, book = datetime(2026, 11, 30, 23, tzinfo=UTC), PriceBook.default()

        async def run() -> int:
            async with self.db.read() as s:
                return await usage.month_spend(s, SPEND_MONTH, now=now, pricebook=book, **subject)

        return run

    async def explain(self, p: Pass, case: Case) -> str:
        """SQLite: EXPLAIN QUERY PLAN. PostgreSQL: EXPLAIN ANALYZE of the statement prepared
        as asyncpg prepares it, with the plan it gets from its sixth run (a generic one where
        PostgreSQL would choose that)."""
        query = p.query(case.dim, case.period, **self.args(case))
        if self.db.is_sqlite:
            sql = str(query.compile(self.db.engine, compile_kwargs={"literal_binds": True}))
            statements = ["EXPLAIN QUERY PLAN " + sql]
        else:
            compiled = query.compile(self.db.engine, compile_kwargs={"render_postcompile": True})
            sql = str(compiled)
            values = ", ".join(quoted(compiled.params[n]) for n in compiled.positiontup or [])
            execute = f"EXECUTE bench_q({values})" if values else "EXECUTE bench_q"
            statements = ["SET plan_cache_mode = force_generic_plan", f"PREPARE bench_q AS {sql}",
                          "EXPLAIN (ANALYZE, BUFFERS) " + execute, "DEALLOCATE bench_q",
                          "RESET plan_cache_mode"]  # fmt: skip
        lines: list[str] = []
        async with self.db.read() as s:
            conn = await s.connection()
            for statement in statements:
                result = await conn.exec_driver_sql(statement)
                if statement.startswith("EXPLAIN"):
                    lines = [r[-1] for r in result.all()]
        return "\n".join(["    " + " ".join(sql.split()), *("      " + ln for ln in lines)])


def quoted(value: Any) -> str:
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


async def run_pass(b: Backend, p: Pass, runs: int, explain_all: bool) -> dict[str, Any]:
    for sql in p.setup:
        started = time.perf_counter()
        await b.execute(sql)
        print(f"{b.name}: {sql.split(' AS')[0]} ({time.perf_counter() - started:.1f} s)")
    scan = "SELECT count(*), sum(cost_micros) FROM usage_intervals"
    base, _ = await best_of(runs, lambda: b.scalar(scan))
    load = os.getloadavg()[0]
    print(
        f"\n{b.name}, {p.name}: baseline full scan count+sum {base * 1000:.0f} ms (load {load:.1f})"
    )
    print(f"  {'figure':28} {'rows':>6} {'best ms':>8} {'x baseline':>10}")
    times: dict[str, float] = {}
    answers: dict[str, list[usage.ReportRow]] = {}
    for case in CASES:
        times[case.name], answers[case.name] = await best_of(runs, b.job(p, case), b.warm_up)
        line(case.name, times[case.name], base, len(answers[case.name]))
    for name, job in (
        ("budget: month_spend user", b.spend(user_id=b.who.user_id)),
        ("budget: month_spend team", b.spend(team_id=b.who.team_id)),
    ):
        times[name], _ = await best_of(runs, job, b.warm_up)
        line(name, times[name], base, 1)
    for case in CASES:
        if explain_all or times[case.name] >= GOAL_S:
            print(f"  plan of {case.name!r} ({p.name}):\n{await b.explain(p, case)}")
    return {"baseline_s": base, "times": times, "answers": answers}


def line(name: str, t: float, base: float, rows: int) -> None:
    flag = "" if t < GOAL_S else "  OVER GOAL"
    print(f"  {name:28} {rows:6} {t * 1000:8.0f} {t / base:10.2f}{flag}")


async def subjects(db: Database) -> Subjects:
    u = UsageInterval
    async with db.read() as s:
        most = select(u.user_id).group_by(u.user_id).order_by(text("count(*) DESC")).limit(1)
        team = select(u.team_id).where(u.team_id.is_not(None)).group_by(u.team_id)
        team = team.order_by(text("count(*) DESC")).limit(1)
        return Subjects(str(await s.scalar(most)), str(await s.scalar(team)))


def passes() -> list[Pass]:
    ledger_only: Report = lambda *a, **k: usage.report(*a, rollup=False, **k)  # noqa: E731
    return [
        Pass("ledger", ledger_only, usage.report_query),
        Pass("gateway", usage.report, usage.report_query),
    ]


async def run_backend(
    name: str, url: str, world: World, load: Callable[[], Any], args: argparse.Namespace
) -> dict[str, Any]:
    db = Database(url)
    try:
        await db.migrate()
        await seed_people(db, world)
        started = time.perf_counter()
        loaded = load()
        rows = loaded if isinstance(loaded, int) else await loaded
        print(f"{name}: loaded {rows:,} ledger rows in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        async with db.write() as s:
            rolled = await usage.rebuild_rollup(s)
        if not db.is_sqlite:
            async with db.write() as s:
                await s.execute(text("ANALYZE usage_rollup"))
        print(f"{name}: rollup of {rolled:,} rows in {time.perf_counter() - started:.1f} s")
        backend = Backend(name, db, await subjects(db))
        result: dict[str, Any] = {"ledger_rows": rows}
        reference = None
        for p in passes():
            result[p.name] = await run_pass(backend, p, args.runs, args.explain)
            answers = result[p.name].pop("answers")
            reference = reference or answers
            if answers != reference:
                raise SystemExit(f"{name}: {p.name} gives other rows than the gateway's query")
        return result
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of users/instances")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--explain", action="store_true", help="print every plan")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    world = make_world(
        users=max(10, round(2000 * args.scale)),
        teams=max(2, round(40 * args.scale)),
        instances=max(10, round(5000 * args.scale)),
        seed=SEED,
    )
    print(f"{len(world.users)} users, {len(world.teams)} teams, {len(world.instances)} instances")
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-accounting-")))
        path = tmp / "ledger.sqlite"
        url = f"sqlite+aiosqlite:///{path}"
        load_lite = lambda: load_sqlite(path, world)  # noqa: E731
        results["sqlite"] = await run_backend("SQLite", url, world, load_lite, args)
        print(f"SQLite file: {path.stat().st_size / 2**20:.0f} MiB")
        if not args.no_postgres:
            if pg_bin() is None:
                raise SystemExit("PostgreSQL is not installed: run scripts/system-deps.sh")
            url = await create_database(stack.enter_context(postgres_server()), "bench_accounting")
            dsn = url.replace("postgresql+asyncpg", "postgresql")
            load_pg = lambda: load_postgres(dsn, world)  # noqa: E731
            results["postgres"] = await run_backend("PostgreSQL", url, world, load_pg, args)
    summarize(results)


def summarize(results: dict[str, dict[str, Any]]) -> None:
    figures: dict[str, Any] = {"report_s_sqlite": None, "report_s_postgres": None}
    print()
    for key, r in results.items():
        for p in ("gateway", "ledger"):
            reports = {c.name: r[p]["times"][c.name] for c in CASES}
            worst = max(reports.values())
            suffix = "" if p == "gateway" else "_" + p
            figures[f"report_s_{key}{suffix}"] = round(worst, 3)
            figures[f"ratio_{key}{suffix}"] = round(worst / r[p]["baseline_s"], 2)
            print(
                f"{key:8} {p:18} slowest report {worst:6.3f} s: goal {'met' if worst < GOAL_S else 'NOT met'}"
            )
        figures[f"baseline_s_{key}"] = round(r["gateway"]["baseline_s"], 3)
        figures[f"times_s_{key}"] = {
            p: {k: round(v, 3) for k, v in r[p]["times"].items()} for p in r if p != "ledger_rows"
        }
        figures["ledger_rows"] = r["ledger_rows"]
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
