"""A year of synthetic usage ledger for bench/accounting: people, instances and their rows.

Deterministic for a seed. Instances are used on most working days (each one on a fixed 60-80 %
of weekdays, rarely at weekends), once or twice a day for 0.5-8 h; each session is one ledger row,
since rows are cut at UTC midnight and no session crosses it. Costs come from a fixed price list
(per GPU-hour by type, per GiB-hour for shares, a CPU rate), in micro-dollars.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aigc_gateway.accounting.core import period_label

FIRST_DAY, LAST_DAY = date(2025, 12, 1), date(2026, 11, 30)

# (gpu_type, gpu_pool, USD per GPU-hour, card memory GiB)
GPUS = (
    ("H100-80GB", "train", 3.90, 80),
    ("A100-80GB", "batch", 2.20, 80),
    ("L40S-48GB", "interactive", 1.10, 48),
)
TEMPLATES = ("comfyui", "sd-webui", "jupyter-torch", "vllm", "ollama", "code-server")
CPU_HOUR_USD = 0.08
MICROS = 1_000_000

COLUMNS = (
    "instance_id",
    "instance_name",
    "user_id",
    "team_id",
    "template_id",
    "template_version",
    "resource",
    "gpu_type",
    "gpu_pool",
    "gpu_count",
    "share_gib",
    "start_at",
    "end_at",
    "observed_at",
    "day",
    "week",
    "month",
    "duration_ms",
    "active_ms",
    "last_active_minute",
    "cost_micros",
    "currency",
    "closed_by",
)


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str
    team_id: str | None


@dataclass(frozen=True, slots=True)
class Holder:
    """One instance and the resource it holds whenever it runs."""

    id: str
    name: str
    owner: Person
    template_id: str
    resource: str
    gpu_type: str | None
    gpu_pool: str | None
    gpu_count: int
    share_gib: float | None
    micros_per_hour: int
    busy: float
    """The share of weekdays the instance is used."""


@dataclass(frozen=True, slots=True)
class World:
    teams: list[tuple[str, str]]
    users: list[Person]
    instances: list[Holder]


def _id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _holding(rng: random.Random) -> dict[str, Any]:
    gpu_type, pool, price, memory = rng.choice(GPUS)
    kind = rng.random()
    if kind < 0.45:
        count = 2 if rng.random() < 0.2 else 1
        micros = round(count * price * MICROS)
        return dict(
            resource="gpu",
            gpu_type=gpu_type,
            gpu_pool=pool,
            gpu_count=count,
            share_gib=None,
            micros_per_hour=micros,
        )
    if kind < 0.75:
        gib = float(rng.choice((8, 12, 16, 24)))
        micros = round(gib * price / memory * MICROS)
        return dict(
            resource="gpu_share",
            gpu_type=gpu_type,
            gpu_pool=pool,
            gpu_count=0,
            share_gib=gib,
            micros_per_hour=micros,
        )
    return dict(
        resource="cpu",
        gpu_type=None,
        gpu_pool=None,
        gpu_count=0,
        share_gib=None,
        micros_per_hour=round(CPU_HOUR_USD * MICROS),
    )


def make_world(*, users: int, teams: int, instances: int, seed: int) -> World:
    """Teams, users (3 % in no team) and instances with random owners."""
    rng = random.Random(seed)
    team_rows = [(_id(rng), f"team-{n:02d}") for n in range(teams)]
    people = [
        Person(_id(rng), f"user{n:04d}", None if rng.random() < 0.03 else rng.choice(team_rows)[0])
        for n in range(users)
    ]
    holders = []
    for n in range(instances):
        template = rng.choice(TEMPLATES)
        holders.append(
            Holder(
                id=_id(rng),
                name=f"{template}-{n}",
                owner=rng.choice(people),
                template_id=template,
                busy=rng.uniform(0.6, 0.8),
                **_holding(rng),
            )
        )
    return World(team_rows, people, holders)


@dataclass(frozen=True, slots=True)
class Day:
    start: datetime
    labels: tuple[str, str, str]
    weekday: bool


def year_days() -> list[Day]:
    days = []
    at = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC)
    while at.date() <= LAST_DAY:
        labels = (period_label(at, "day"), period_label(at, "week"), period_label(at, "month"))
        days.append(Day(at, labels, at.weekday() < 5))
        at += timedelta(days=1)
    return days


def _sessions(rng: random.Random) -> Iterator[tuple[int, int]]:
    """Start and length in seconds after midnight: one session, sometimes a second one."""
    start = rng.randrange(6 * 3600, 11 * 3600)
    length = rng.randrange(1800, 8 * 3600)
    yield start, length
    if rng.random() < 0.3:
        second = start + length + rng.randrange(1800, 3 * 3600)
        if second < 23 * 3600:
            yield second, min(rng.randrange(1800, 8 * 3600), 86400 - second)


def ledger_rows(
    world: World, *, seed: int, stamp: Callable[[datetime], Any]
) -> Iterator[tuple[Any, ...]]:
    """Every closed row of the year, in :data:`COLUMNS` order, day by day as the gateway writes
    them (so row order follows time, as in a real ledger); ``stamp`` renders the datetimes (as
    they are for asyncpg, as text for SQLite)."""
    rng = random.Random(seed)
    for day in year_days():
        for h in world.instances:
            if rng.random() >= (h.busy if day.weekday else 0.05):
                continue
            for offset, length in _sessions(rng):
                yield _row(h, day, offset, length, rng, stamp)


def _row(
    h: Holder,
    day: Day,
    offset: int,
    length: int,
    rng: random.Random,
    stamp: Callable[[datetime], Any],
) -> tuple[Any, ...]:
    start = day.start + timedelta(seconds=offset)
    end = start + timedelta(seconds=length)
    return (
        h.id, h.name, h.owner.id, h.owner.team_id, h.template_id, "1",
        h.resource, h.gpu_type, h.gpu_pool, h.gpu_count, h.share_gib,
        stamp(start), stamp(end), stamp(end), *day.labels,
        length * 1000, int(length * 1000 * rng.uniform(0.2, 0.9)), None,
        h.micros_per_hour * length // 3600, "USD",
        "day" if offset + length == 86400 else "stop",
    )  # fmt: skip
