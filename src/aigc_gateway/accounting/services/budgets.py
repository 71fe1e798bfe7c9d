"""Budgets: monthly spending limits per team and per user, and a team's concurrent GPU limit.

- A **soft** limit warns once a month: a :class:`BudgetWarning` row, an audit-visible event on
  the owner's instance, and a banner on the dashboard (``status``).
- A **hard** limit refuses new starts with the reason ("team design spent 812.40 of 800.00 USD
  this month"); what runs is left alone unless the budget says ``pause_when_over``, in which case
  the resync pauses it (data kept).
- ``max_gpus`` caps the GPUs a team's members hold at once (a share counts as one).

Spending is the ledger's: closed intervals plus what open ones have cost so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.accounting.core import MICROS, PriceBook, format_money
from aigc_gateway.auth.core.actor import NO_CLIENT, Client
from aigc_gateway.auth.core.principal import Principal, require_admin
from aigc_gateway.auth.core.secrets import new_id
from aigc_gateway.domain.clock import wall_clock
from aigc_gateway.errors import Conflict, NotFound, UserError
from aigc_gateway.store import access as acl
from aigc_gateway.store import usage
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Budget, BudgetWarning, Instance, Team, TeamMember, User


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget_id: str
    scope: str
    subject: str
    """The team's or user's name."""
    month: str
    spent_micros: int
    soft_micros: int | None
    hard_micros: int | None
    pause_when_over: bool
    max_gpus: int | None
    currency: str

    @property
    def over_soft(self) -> bool:
        return self.soft_micros is not None and self.spent_micros >= self.soft_micros

    @property
    def over_hard(self) -> bool:
        return self.hard_micros is not None and self.spent_micros >= self.hard_micros

    def describe(self) -> str:
        limit = self.hard_micros if self.over_hard else self.soft_micros
        return (
            f"{self.scope} {self.subject} spent {format_money(self.spent_micros, self.currency)}"
            f" of {format_money(limit or 0, self.currency)} this month ({self.month})"
        )


def to_micros(amount: Decimal | float | str | None) -> int | None:
    if amount is None:
        return None
    value = Decimal(str(amount))
    if value < 0:
        raise UserError("a budget limit cannot be negative", code="invalid_budget")
    return int(value * MICROS)


class Budgets:
    def __init__(
        self, db: Database, pricebook: PriceBook, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._db = db
        self._pricebook = pricebook
        self._clock = clock or wall_clock
        """Domain time, the ledger's (the composition root gives the controller's clock)."""

    @property
    def currency(self) -> str:
        return self._pricebook.currency

    async def set(
        self,
        who: Principal,
        scope: str,
        subject_name: str,
        *,
        soft: Decimal | None,
        hard: Decimal | None,
        pause_when_over: bool,
        max_gpus: int | None,
        client: Client = NO_CLIENT,
    ) -> BudgetStatus:
        """Create or replace the budget of a team or user (idempotent; administrators), and
        audit it in the same transaction."""
        require_admin(who)
        if scope not in ("team", "user"):
            raise UserError("scope is `team` or `user`", code="invalid_budget")
        if max_gpus is not None and scope != "team":
            raise UserError("max_gpus applies to teams", code="invalid_budget")
        soft_m, hard_m = to_micros(soft), to_micros(hard)
        if soft_m is not None and hard_m is not None and soft_m > hard_m:
            raise UserError("the soft limit must not exceed the hard limit", code="invalid_budget")
        async with self._db.write() as session:
            subject_id = await self._subject(session, scope, subject_name)
            row = await session.scalar(
                select(Budget).where(Budget.scope == scope, Budget.subject_id == subject_id)
            )
            if row is None:
                row = Budget(id=new_id(), scope=scope, subject_id=subject_id)
                session.add(row)
            row.soft_micros, row.hard_micros = soft_m, hard_m
            row.pause_when_over, row.max_gpus = pause_when_over, max_gpus
            row.updated_at = self._clock()
            await session.flush()
            detail = {
                "soft": None if soft is None else str(soft),
                "hard": None if hard is None else str(hard),
                "pause_when_over": pause_when_over,
                "max_gpus": max_gpus,
            }
            await acl.audit_by(
                session, who, client, "budget.set",
                target_type=scope, target_id=subject_name, detail=detail,
            )  # fmt: skip
            return await self._status(session, row, subject_name)

    async def remove(
        self, who: Principal, scope: str, subject_name: str, *, client: Client = NO_CLIENT
    ) -> None:
        """Remove a budget (administrators; nothing there is fine), audited with it."""
        require_admin(who)
        async with self._db.write() as session:
            subject_id = await self._subject(session, scope, subject_name)
            row = await session.scalar(
                select(Budget).where(Budget.scope == scope, Budget.subject_id == subject_id)
            )
            if row is not None:
                await session.delete(row)
            await acl.audit_by(
                session, who, client, "budget.remove", target_type=scope, target_id=subject_name
            )

    async def all(self) -> list[BudgetStatus]:
        async with self._db.read() as session:
            rows = list(await session.scalars(select(Budget).order_by(Budget.scope)))
            return [await self._status(session, r) for r in rows]

    async def for_user(self, user_id: str) -> list[BudgetStatus]:
        """The budgets that apply to a user: their own and their teams'."""
        async with self._db.read() as session:
            return await self._applicable(session, user_id)

    async def check_start(self, owner_id: str, *, gpus: int) -> list[BudgetStatus]:
        """Refuse (Conflict) a start the owner's budgets forbid; return budgets past their soft
        limit (the caller warns)."""
        async with self._db.read() as session:
            statuses = await self._applicable(session, owner_id)
            for status in statuses:
                if status.over_hard:
                    raise Conflict(
                        f"budget exceeded: {status.describe()}; new starts are refused until "
                        "next month or until an administrator raises the limit",
                        code="budget_exceeded",
                    )
                if status.scope == "team" and status.max_gpus is not None and gpus:
                    held = await self._team_gpus(session, status.budget_id)
                    if held + gpus > status.max_gpus:
                        raise Conflict(
                            f"team {status.subject} may hold {status.max_gpus} GPU(s) at once "
                            f"and holds {held}; this start needs {gpus} more",
                            code="team_gpu_limit",
                        )
        return [s for s in statuses if s.over_soft]

    async def warn_once(self, statuses: Sequence[BudgetStatus]) -> list[BudgetStatus]:
        """Record a soft-limit warning once per budget and month; return the new ones."""
        fresh = []
        async with self._db.write() as session:
            for status in statuses:
                key = (status.budget_id, status.month)
                if await session.get(BudgetWarning, key) is None:
                    session.add(
                        BudgetWarning(
                            budget_id=status.budget_id,
                            month=status.month,
                            at=self._clock(),
                            spent_micros=status.spent_micros,
                        )
                    )
                    fresh.append(status)
        return fresh

    async def over_hard_to_pause(self) -> list[str]:
        """Running instances whose owner's budget is past its hard limit with
        ``pause_when_over``."""
        async with self._db.read() as session:
            budgets = list(
                await session.scalars(select(Budget).where(Budget.pause_when_over.is_(True)))
            )
            victims: list[str] = []
            for b in budgets:
                status = await self._status(session, b)
                if not status.over_hard:
                    continue
                owners = await self._members(session, b)
                ids = await session.scalars(
                    select(Instance.id).where(
                        Instance.owner_id.in_(owners), Instance.desired_state == "running"
                    )
                )
                victims.extend(ids)
            return victims

    # -- internals ------------------------------------------------------------------------------

    async def _subject(self, session: AsyncSession, scope: str, name: str) -> str:
        model = Team if scope == "team" else User
        found = await session.scalar(select(model.id).where(model.name == name))
        if found is None:
            raise NotFound(f"no {scope} named {name!r}", code=f"{scope}_not_found")
        return str(found)

    async def _applicable(self, session: AsyncSession, user_id: str) -> list[BudgetStatus]:
        teams = list(
            await session.scalars(select(TeamMember.team_id).where(TeamMember.user_id == user_id))
        )
        rows = await session.scalars(
            select(Budget).where(
                ((Budget.scope == "user") & (Budget.subject_id == user_id))
                | ((Budget.scope == "team") & Budget.subject_id.in_(teams))
            )
        )
        return [await self._status(session, r) for r in rows]

    async def _status(
        self, session: AsyncSession, row: Budget, name: str | None = None
    ) -> BudgetStatus:
        now = self._clock()
        month = usage.month_of(now)
        if row.scope == "team":
            spent = await usage.month_spend(
                session, month, team_id=row.subject_id, now=now, pricebook=self._pricebook
            )
            name = name or await session.scalar(select(Team.name).where(Team.id == row.subject_id))
        else:
            spent = await usage.month_spend(
                session, month, user_id=row.subject_id, now=now, pricebook=self._pricebook
            )
            name = name or await session.scalar(select(User.name).where(User.id == row.subject_id))
        return BudgetStatus(
            budget_id=row.id,
            scope=row.scope,
            subject=name or "?",
            month=month,
            spent_micros=spent,
            soft_micros=row.soft_micros,
            hard_micros=row.hard_micros,
            pause_when_over=row.pause_when_over,
            max_gpus=row.max_gpus,
            currency=self._pricebook.currency,
        )

    async def _members(self, session: AsyncSession, row: Budget) -> list[str]:
        if row.scope == "user":
            return [row.subject_id]
        return list(
            await session.scalars(
                select(TeamMember.user_id).where(TeamMember.team_id == row.subject_id)
            )
        )

    async def _team_gpus(self, session: AsyncSession, budget_id: str) -> int:
        row = await session.get(Budget, budget_id)
        assert row is not None
        members = await self._members(session, row)
        held = await session.scalars(
            select(Instance.gpu_ids).where(
                Instance.owner_id.in_(members), Instance.gpu_ids.is_not(None)
            )
        )
        return sum(len(ids or []) for ids in held)
