"""Instance actions, shared by the REST API, the CLI and (later) the dashboard.

Actions only change desired state in the store and kick the controller; they never start or stop
engines themselves. Each action is idempotent: pausing a paused instance, or a retried create with
the same ``request_id``, changes nothing and is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.accounting.services.budgets import Budgets, BudgetStatus
from aigc_gateway.accounting.services.reports import LedgerInterval
from aigc_gateway.auth.core.actor import NO_CLIENT, Client
from aigc_gateway.auth.core.principal import Access, Principal, authorize_instance, require_admin
from aigc_gateway.auth.core.secrets import new_id, new_slug
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.catalog.schema import Template
from aigc_gateway.domain.actions import Outcome, api_action, effect, judge
from aigc_gateway.domain.instances import InstanceView
from aigc_gateway.domain.queries import InstanceFilter
from aigc_gateway.domain.reconcile import Phase, Situation, Step, decide
from aigc_gateway.domain.states import HOLDS_PROCESS, STABLE, DesiredState, InstanceState
from aigc_gateway.errors import Conflict, NotFound, UserError
from aigc_gateway.gpu import Request
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.events import EventHub, EventRecord
from aigc_gateway.runtime.base import Runtime
from aigc_gateway.storage.quota import Level, StorageQuotas, StorageUse
from aigc_gateway.store import access as acl
from aigc_gateway.store import instances as repo
from aigc_gateway.store import usage as ledger
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import GpuCordon, Instance, InstanceShare, User

LOG_TAIL_MAX_BYTES = 1024 * 1024
"""At most this much of an engine's log is read for a tail, however long its lines."""
SETTLE_S = 5.0
"""How long an action's answer waits for the controller's first step (see :meth:`act`)."""
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
ID_RE = re.compile(r"^[0-9a-f]{32}$")


class Action(enum.StrEnum):
    START = "start"
    RESUME = "resume"
    PAUSE = "pause"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class CreateRequest:
    template_id: str
    name: str | None = None
    request_id: str | None = None
    """Client-chosen id: a retried create with the same id returns the same instance."""


@dataclass(frozen=True, slots=True)
class InstancePage:
    """One page of an administrator's instance search: each instance with its owner's name."""

    rows: list[tuple[Instance, str]]
    page: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class CardFacts:
    newest_event: dict[str, int]
    """Instance id → its newest event's id."""
    owner_names: dict[str, str]
    """User id → user name, for the owners of instances shared with the viewer."""
    shares: dict[str, list[tuple[str, str, str]]]
    """Own instance id → its shares as (share id, user or team name, ``user`` or ``team``)."""


@dataclass(frozen=True, slots=True)
class InstanceLabel:
    """How an administrator's GPU listing names an instance that holds or awaits a card."""

    name: str
    owner: str
    """The owner's user name."""
    pid: int | None
    """The engine's process (what NVML reports GPU memory by); None while none runs."""


class InstanceService:
    def __init__(
        self,
        *,
        db: Database,
        registry: TemplateRegistry,
        controller: Controller,
        runtime: Runtime,
        default_limit: int,
        on_access_change: Callable[[], None] = lambda: None,
        gpus: GpuBroker | None = None,
        budgets: Budgets | None = None,
        hub: EventHub | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._db = db
        self._hub = hub if hub is not None else EventHub()
        self._settle_s = settle_s
        self._registry = registry
        self._controller = controller
        self._runtime = runtime
        self._default_limit = default_limit
        self._on_access_change = on_access_change
        self._gpus = gpus if gpus is not None else GpuBroker([], "no GPU inventory")
        self._budgets = budgets
        self._storage = StorageQuotas(registry=registry, volumes=runtime.volumes)

    async def create(
        self, who: Principal, req: CreateRequest, *, client: Client = NO_CLIENT
    ) -> tuple[Instance, bool]:
        """Create an instance (desired: running). Returns it and whether it is new (a retry
        with the same ``request_id`` is not: nothing is written, not even to the audit log)."""
        authorize_instance(who, who.user_id, Access.OPERATE)
        loaded = self._registry.get(req.template_id)
        if loaded is None or not loaded.template.enabled:
            raise NotFound(
                f"unknown template {req.template_id!r}; GET /api/templates lists those offered",
                code="unknown_template",
            )
        if not loaded.installed:
            raise Conflict(loaded.install_problem, code="engine_not_installed")
        self._check_gpu_request(loaded.template)
        if req.name is not None and not NAME_RE.match(req.name):
            raise UserError(
                f"invalid instance name {req.name!r}: use 1-40 lowercase letters, digits and '-', "
                "starting with a letter or digit",
                code="invalid_name",
            )
        template = loaded.template
        warnings = await self._check_budget(who.user_id, template)
        stored = await self._storage.check_start(who.user_id, template.family)
        async with self._db.write() as session:
            user = await repo.lock_user(session, who.user_id)
            if req.request_id:
                existing = await repo.by_request_id(session, who.user_id, req.request_id)
                if existing is not None:
                    return existing, False
            limit = user.max_instances if user.max_instances is not None else self._default_limit
            repo.ensure_owner_may_create(await repo.count_live(session, who.user_id), limit)
            taken = await repo.names_in_use(session, who.user_id)
            name = req.name or _free_name(template.family, taken)
            if name in taken:
                raise Conflict(f"you already have an instance named {name!r}", code="name_taken")
            volume = await repo.volume_for(
                session,
                user_id=who.user_id,
                family=template.family,
                path=self._runtime.volumes.mount(who.user_id, template.family),
            )
            now = datetime.now(UTC)
            inst = Instance(
                id=new_id(),
                slug=new_slug(),
                name=name,
                owner_id=who.user_id,
                request_id=req.request_id,
                template_id=template.id,
                template_revision_id=self._registry.revision_ids[template.id],
                family=template.family,
                volume_id=volume.id,
                desired_state=DesiredState.RUNNING.value,
                state=InstanceState.PENDING.value,
                reason="created",
                generation=1,
                launched_generation=0,
                delete_data=False,
                runtime=self._runtime.name,
                created_at=now,
                updated_at=now,
            )
            session.add(inst)
            try:
                await session.flush()
            except IntegrityError as exc:
                raise Conflict(
                    f"you already have an instance named {name!r}", code="name_taken"
                ) from exc
            await repo.add_event(
                session, instance_id=inst.id, kind="action", message="created", actor=who.user_id
            )
            await acl.audit_by(
                session, who, client, "instance.create",
                target_type="instance", target_id=inst.id, detail={"template": template.id},
            )  # fmt: skip
        await self._warn(inst.id, warnings)
        await self._warn_storage(inst.id, stored)
        self._controller.route_changed(inst)
        self._controller.kick(inst.id)
        return inst, True

    def _check_gpu_request(self, template: Template) -> None:
        """Refuse at once what could never be placed here; what is only busy now queues."""
        gpu = template.resources.gpu
        if not gpu.wanted:
            return
        why = self._gpus.never_reason(Request.from_gpu_request("check", gpu))
        if why:
            need = f"{gpu.count} GPU(s)" if gpu.count else f"a {gpu.memory_gib:g} GiB GPU share"
            raise Conflict(
                f"{template.display.name.en} needs {need}, which cannot be placed here: {why}",
                code="gpu_unavailable",
            )

    async def set_gpu_cordon(
        self,
        who: Principal,
        gpu_id: str,
        mode: Literal["cordon", "drain"] | None,
        *,
        client: Client = NO_CLIENT,
    ) -> list[str]:
        """Cordon a GPU (no new placements), drain it (also restart what runs on it, so those
        engines move to other cards or the queue), or uncordon it. Returns the instances being
        moved. Idempotent."""
        require_admin(who)
        if self._gpus.gpu(gpu_id) is None:
            raise NotFound(f"no GPU {gpu_id!r} in the inventory", code="gpu_not_found")
        state = self._gpus.inventory.state(gpu_id)
        holders = [*([state.whole_owner] if state.whole_owner else []), *sorted(state.sharers)]
        moved: list[str] = []
        async with self._db.write() as session:
            row = await session.get(GpuCordon, gpu_id, with_for_update=True)
            if mode is None:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(GpuCordon(gpu_id=gpu_id, mode=mode, by=who.user_id, at=_now()))
            else:
                row.mode, row.by, row.at = mode, who.user_id, _now()
            for instance_id in holders if mode == "drain" else []:
                inst = await session.get(Instance, instance_id, with_for_update=True)
                if inst is None or inst.desired_state != DesiredState.RUNNING:
                    continue
                if _apply(inst, Action.RESTART):
                    inst.updated_at = _now()
                    await repo.add_event(
                        session,
                        instance_id=inst.id,
                        kind="action",
                        message=f"GPU {gpu_id} is drained: restarting on another GPU",
                        actor=who.user_id,
                    )
                    moved.append(inst.id)
            await acl.audit_by(
                session, who, client, f"gpu.{mode or 'uncordon'}",
                target_type="gpu", target_id=gpu_id, detail={"moved": moved},
            )  # fmt: skip
        self._gpus.set_cordon(gpu_id, mode)
        for instance_id in moved:
            self._controller.kick(instance_id)
        if mode is None:
            self._controller.admit()
        return moved

    async def get(self, who: Principal, instance_id: str) -> Instance:
        async with self._db.read() as session:
            return await self._visible(session, who, instance_id, Access.VIEW)

    async def list_visible(self, who: Principal, *, all_users: bool = False) -> Sequence[Instance]:
        """Own instances and those shared with the user (or their teams); admins may ask for
        everyone's."""
        async with self._db.read() as session:
            if all_users and who.acts_as_admin:
                return await repo.list_for(session, owner_id=None)
            own = await repo.list_for(session, owner_id=who.user_id)
            shared_ids = await acl.shared_instance_ids(session, who.user_id, who.team_ids)
            shared = [
                i for i in await repo.list_by_ids(session, shared_ids) if i.owner_id != who.user_id
            ]
        return [*own, *shared]

    async def search(
        self, who: Principal, f: InstanceFilter, *, page: int, page_size: int
    ) -> InstancePage:
        """Everyone's instances matching ``f`` (administrators only), one page of them: what
        the admin Instances page and ``GET /api/admin/instances`` both show."""
        require_admin(who)
        async with self._db.read() as session:
            found = await repo.search(session, f, offset=page * page_size, limit=page_size + 1)
        return InstancePage(found[:page_size], page, has_more=len(found) > page_size)

    async def owner_names(self, who: Principal, instance_ids: Sequence[str]) -> dict[str, str]:
        """The owners' user names of these instances, by instance id (administrators)."""
        require_admin(who)
        async with self._db.read() as session:
            return await repo.owner_names(session, instance_ids)

    async def labels(
        self, who: Principal, instance_ids: Collection[str]
    ) -> dict[str, InstanceLabel]:
        """Name, owner's name and engine pid of these instances, by id, in one query
        (administrators: the GPU listing's holders and queue). Unknown ids are left out."""
        require_admin(who)
        if not instance_ids:
            return {}
        async with self._db.read() as session:
            found = await repo.labels(session, instance_ids)
        return {i: InstanceLabel(name, owner, pid) for i, (name, owner, pid) in found.items()}

    async def card_facts(self, who: Principal, instances: Sequence[InstanceView]) -> CardFacts:
        """What the dashboard's instance cards show beyond the rows ``who`` may already see:
        the newest event id of each (where its live stream resumes), the owners' names of
        instances shared with ``who``, and the shares of ``who``'s own (one query each)."""
        owned = [i.id for i in instances if i.owner_id == who.user_id]
        owners = {i.owner_id for i in instances} - {who.user_id}
        async with self._db.read() as session:
            newest = await repo.newest_event_ids(session, [i.id for i in instances])
            names = await repo.user_names(session, owners)
            shares = await acl.shares_of_instances(session, owned)
        return CardFacts(newest, names, shares)

    async def shares(self, who: Principal, instance_id: str) -> Sequence[tuple[InstanceShare, str]]:
        async with self._db.read() as session:
            await self._visible(session, who, instance_id, Access.SEE_SHARES)
            return await acl.shares_of(session, instance_id)

    async def share(
        self,
        who: Principal,
        instance_id: str,
        *,
        user_name: str | None,
        team_name: str | None,
        client: Client = NO_CLIENT,
    ) -> InstanceShare:
        """Share with one user or one team (idempotent). Only the owner or an admin may."""
        if (user_name is None) == (team_name is None):
            raise UserError("share with exactly one of `user` or `team`", code="invalid_share")
        async with self._db.write() as session:
            inst = await self._visible(session, who, instance_id, Access.SHARE)
            user_id = team_id = None
            if user_name is not None:
                target = await session.scalar(select(User).where(User.name == user_name))
                if target is None:
                    raise NotFound(f"no user named {user_name!r}", code="user_not_found")
                if target.id == inst.owner_id:
                    raise UserError("the owner already has access", code="invalid_share")
                user_id = target.id
            else:
                team = await acl.team_by_name(session, str(team_name))
                if team is None:
                    raise NotFound(f"no team named {team_name!r}", code="team_not_found")
                team_id = team.id
            share = await acl.add_share(
                session,
                instance_id=inst.id,
                user_id=user_id,
                team_id=team_id,
                by=who.user_id,
                now=datetime.now(UTC),
            )
            await repo.add_event(
                session,
                instance_id=inst.id,
                kind="share",
                message=f"shared with {'user ' + str(user_name) if user_name else 'team ' + str(team_name)}",
                actor=who.user_id,
            )
            await acl.audit_by(
                session, who, client, "share.create", target_type="instance",
                target_id=inst.id, detail={"user": user_name, "team": team_name},
            )  # fmt: skip
        self._on_access_change()
        return share

    async def unshare(
        self, who: Principal, instance_id: str, share_id: str, *, client: Client = NO_CLIENT
    ) -> None:
        async with self._db.write() as session:
            inst = await self._visible(session, who, instance_id, Access.SHARE)
            await acl.remove_share(session, inst.id, share_id)
            await repo.add_event(
                session,
                instance_id=inst.id,
                kind="share",
                message="share revoked",
                actor=who.user_id,
            )
            await acl.audit_by(
                session, who, client, "share.revoke", target_type="instance",
                target_id=inst.id, detail={"share": share_id},
            )  # fmt: skip
        self._on_access_change()

    async def act(
        self, who: Principal, instance_id: str, action: Action, *, client: Client = NO_CLIENT
    ) -> Instance:
        """Ask for ``action``; refuse what the state does not allow (409 ``action_not_allowed``,
        see :mod:`aigc_gateway.domain.actions`); a repeat changes nothing. When the action makes
        the controller move the instance, the answer waits (up to ``settle_s``) for that first
        move, so it shows the state after the action (``stopping`` after a restart, ``starting``
        after a resume), never the snapshot from before it."""
        warnings: list[BudgetStatus] = []
        stored: StorageUse | None = None
        if action is not Action.PAUSE:
            current = await self.get(who, instance_id)
            loaded = self._registry.get(current.template_id)
            if loaded is not None and current.desired_state != DesiredState.RUNNING:
                warnings = await self._check_budget(current.owner_id, loaded.template)
            if current.desired_state != DesiredState.RUNNING or action is Action.RESTART:
                stored = await self._storage.check_start(current.owner_id, current.family)
        with self._hub.subscribe(instance_id) as moves:  # before the write: no move is missed
            async with self._db.write() as session:
                inst = await self._visible(session, who, instance_id, Access.OPERATE)
                if inst.desired_state == DesiredState.DELETED:
                    raise Conflict("this instance is being deleted", code="instance_deleting")
                changed = _apply(inst, action)
                if changed:
                    inst.updated_at = datetime.now(UTC)
                    await repo.add_event(
                        session,
                        instance_id=inst.id,
                        kind="action",
                        message=action.value,
                        actor=who.user_id,
                    )
                await acl.audit_by(
                    session, who, client, f"instance.{action.value}",
                    target_type="instance", target_id=inst.id,
                )  # fmt: skip
            await self._warn(inst.id, warnings)
            if changed and stored is not None:
                await self._warn_storage(inst.id, stored)
            self._controller.route_changed(inst)
            self._controller.kick(inst.id)
            if changed and _moves_at_once(inst):
                return await self._settled(inst, moves)
        return inst

    async def _settled(self, inst: Instance, moves: asyncio.Queue[EventRecord]) -> Instance:
        """``inst`` as it is after the controller's first transition (or ``settle_s``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settle_s):
                while (await moves.get()).kind != "transition":
                    pass
        async with self._db.read() as session:
            fresh = await repo.get(session, inst.id)
        return fresh if fresh is not None else inst

    async def _check_budget(self, owner_id: str, template: Template) -> list[BudgetStatus]:
        """Refuse a start past a hard limit or a team's GPU limit; return soft-limit warnings."""
        if self._budgets is None:
            return []
        gpu = template.resources.gpu
        wanted = gpu.count or (1 if gpu.memory_gib is not None else 0)
        return await self._budgets.check_start(owner_id, gpus=wanted)

    async def _warn(self, instance_id: str, statuses: list[BudgetStatus]) -> None:
        """Warn once per budget and month that its soft limit is reached."""
        if self._budgets is None or not statuses:
            return
        for status in await self._budgets.warn_once(statuses):
            async with self._db.write() as session:
                await repo.add_event(
                    session,
                    instance_id=instance_id,
                    kind="budget",
                    message=f"budget warning: {status.describe()}",
                    data={"budget_id": status.budget_id, "spent_micros": status.spent_micros},
                )

    async def _warn_storage(self, instance_id: str, use: StorageUse) -> None:
        """At a start: an event when the family's data is at 90 % of its quota or more."""
        if use.level is Level.OK:
            return
        async with self._db.write() as session:
            ev = await repo.add_event(
                session,
                instance_id=instance_id,
                kind="storage",
                message=use.warning(),
                data={"used_bytes": use.used_bytes, "quota_bytes": use.quota_bytes},
            )
        self._hub.publish(EventRecord.of(ev))

    async def delete(
        self, who: Principal, instance_id: str, *, delete_data: bool, client: Client = NO_CLIENT
    ) -> Instance:
        async with self._db.write() as session:
            inst = await self._visible(session, who, instance_id, Access.DELETE)
            if inst.desired_state != DesiredState.DELETED or (delete_data and not inst.delete_data):
                inst.desired_state = DesiredState.DELETED.value
                inst.delete_data = inst.delete_data or delete_data
                inst.updated_at = datetime.now(UTC)
                message = "delete with data" if inst.delete_data else "delete, keep data"
                await repo.add_event(
                    session, instance_id=inst.id, kind="action", message=message, actor=who.user_id
                )
            await acl.audit_by(
                session, who, client, "instance.delete", target_type="instance",
                target_id=inst.id, detail={"delete_data": delete_data},
            )  # fmt: skip
        self._controller.route_changed(inst)
        self._controller.kick(inst.id)
        return inst

    async def events(self, who: Principal, instance_id: str, after: int = 0) -> list[EventRecord]:
        async with self._db.read() as session:
            await self._visible(session, who, instance_id, Access.VIEW)
            return [EventRecord.of(e) for e in await repo.events_after(session, instance_id, after)]

    async def usage(self, who: Principal, instance_id: str) -> list[LedgerInterval]:
        """The instance's usage ledger rows, oldest first (open ones have no end yet), for
        whoever may view it: the owner, a share, an administrator."""
        async with self._db.read() as session:
            await self._visible(session, who, instance_id, Access.VIEW)
            rows = await ledger.intervals_of(session, instance_id)
            return [LedgerInterval.of(r) for r in rows]

    async def logs(self, who: Principal, instance_id: str, *, lines: int) -> str:
        """The engine's last ``lines`` lines of output, within its last ``LOG_TAIL_MAX_BYTES``."""
        await self.get(who, instance_id)
        return await self._runtime.logs(instance_id, lines=lines, tail_bytes=LOG_TAIL_MAX_BYTES)

    async def _visible(
        self, session: AsyncSession, who: Principal, instance_id: str, access: Access
    ) -> Instance:
        if not ID_RE.match(instance_id):
            raise NotFound(
                f"{instance_id!r} is not an instance id (32 hex characters)",
                code="instance_not_found",
            )
        # Writers lock the row (PostgreSQL) so concurrent actions apply one after the other.
        lock = access not in (Access.VIEW, Access.USE)
        inst = await session.get(
            Instance, instance_id, with_for_update=lock, populate_existing=lock
        )
        if inst is None or inst.state == InstanceState.DELETED:
            raise NotFound("no such instance", code="instance_not_found")
        shared = inst.owner_id != who.user_id and await acl.is_shared_with(
            session, inst.id, who.user_id, who.team_ids
        )
        authorize_instance(who, inst.owner_id, access, shared=shared)
        found: Instance = inst
        return found


def _now() -> datetime:
    return datetime.now(UTC)


def _free_name(family: str, taken: set[str]) -> str:
    if family not in taken:
        return family
    n = 2
    while f"{family}-{n}" in taken:
        n += 1
    return f"{family}-{n}"


def _apply(inst: Instance, action: Action) -> bool:
    """Set desired state for ``action``; return whether anything changed (pure on the row).
    Raises :class:`Conflict` (``action_not_allowed``) when the state does not allow it."""
    state, desired = InstanceState(inst.state), DesiredState(inst.desired_state)
    pending = inst.generation > inst.launched_generation
    wanted = api_action(action.value, state)
    verdict = judge(wanted, state=state, desired=desired, restart_pending=pending)
    if not verdict.accepted:
        raise Conflict(f"cannot {action.value}: {verdict.reason}", code="action_not_allowed")
    if verdict.outcome is Outcome.REPEAT:
        return False
    new_desired, new_pending = effect(wanted, state=state, desired=desired, restart_pending=pending)
    inst.desired_state = new_desired.value
    if new_pending and not pending:
        inst.generation += 1
    return True


def _moves_at_once(inst: Instance) -> bool:
    """Whether the controller's next step for ``inst`` records a transition right away (not a
    wait for readiness or for an engine already being stopped)."""
    state = InstanceState(inst.state)
    if state not in STABLE and state is not InstanceState.PENDING:
        return False
    situation = Situation(
        desired=DesiredState(inst.desired_state),
        state=state,
        phase=Phase.READY if state in HOLDS_PROCESS else Phase.ABSENT,
        restart_pending=inst.generation > inst.launched_generation,
    )
    return decide(situation) not in (Step.NOTHING, Step.AWAIT_READY)
