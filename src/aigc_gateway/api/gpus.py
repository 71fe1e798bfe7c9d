"""GPUs, for administrators: each card with its pool, price, memory and what holds it; the wait
queue; cordon, drain and uncordon."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep
from aigc_gateway.auth.core.principal import Principal, require_admin
from aigc_gateway.gateway import Gateway
from aigc_gateway.gpu import Gpu, Request, Waiting
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.lifecycle.service import InstanceLabel

router = APIRouter(prefix="/api/gpus", tags=["gpus"])


class Holder(BaseModel):
    instance_id: str
    name: str
    owner: str
    share_gib: float | None
    """The share's size; None for a whole GPU."""
    memory_used_mib: int | None
    """What the engine holds on the GPU now (NVML; None where unknown)."""
    since: datetime | None


class GpuPublic(BaseModel):
    id: str
    host: str
    index: int
    type: str
    memory_gib: float
    allocated_gib: float
    """Whole card, or the sum of its shares."""
    free_gib: float
    pool: str
    pool_rank: int
    price_per_hour: float
    labels: dict[str, str]
    cordon: Literal["cordon", "drain"] | None
    """``cordon``: takes no new engines; ``drain``: its engines were also moved off."""
    mode: Literal["free", "whole", "shared"]
    instances: list[Holder]


class QueueEntry(BaseModel):
    instance_id: str
    name: str
    owner: str
    position: int
    priority: int
    since: datetime
    estimate_s: float | None
    wants: str
    """The request in words: "2 GPUs (a100, h100)", "a 8 GiB share"."""


class GpuInventory(BaseModel):
    source: str
    mps: bool
    """Whether GPU memory shares are enforced with NVIDIA MPS on this host."""
    gpus: list[GpuPublic]
    queue: list[QueueEntry]


class CordonResult(BaseModel):
    gpu_id: str
    cordon: Literal["cordon", "drain"] | None
    moved: list[str]
    """Instances restarted elsewhere (drain)."""


UNKNOWN = InstanceLabel(name="?", owner="?", pid=None)
"""For an instance the store no longer has (deleted meanwhile)."""

Describe = Callable[[Request], str]
"""Puts a queued request into words (the dashboard passes one in the page's language)."""


def describe_request(r: Request) -> str:
    """``"a 8 GiB share"``, ``"2 GPU(s) (a100, h100)"``."""
    wants = f"a {r.memory_gib:g} GiB share" if r.is_share else f"{r.count} GPU(s)"
    return wants + (f" ({', '.join(r.types)})" if r.types else "")


@router.get("")
async def list_gpus(gw: GatewayDep, who: CurrentUser) -> GpuInventory:
    require_admin(who)
    return await gpu_inventory(gw, who)


async def gpu_inventory(
    gw: Gateway, who: Principal, *, describe: Describe = describe_request
) -> GpuInventory:
    """Every card with what holds it, and the queue: for the API and the admin GPU page
    (administrators only: the service refuses anyone else)."""
    broker = gw.gpus
    inv = broker.inventory
    entries = broker.queue.ordered()
    ids = {a.instance_id for a in inv.allocations} | {e.instance_id for e in entries}
    names = await gw.instances.labels(who, ids)
    usage = await gw.gpu_usage.by_session() if inv.allocations else {}

    def holder(instance_id: str, share: float | None) -> Holder:
        label = names.get(instance_id, UNKNOWN)
        used = usage.get(label.pid) if label.pid else None
        since = broker.held_since(instance_id)
        return Holder(
            instance_id=instance_id,
            name=label.name,
            owner=label.owner,
            share_gib=share,
            memory_used_mib=None if used is None else used // 2**20,
            since=None if since is None else datetime.fromtimestamp(since, UTC),
        )

    return GpuInventory(
        source=broker.note,
        mps=shutil.which(gw.settings.mps_control) is not None,
        gpus=[_gpu_public(broker, g, holder) for g in inv.gpus],
        queue=[_queue_entry(broker, e, names, describe) for e in entries],
    )


def _gpu_public(
    broker: GpuBroker, g: Gpu, holder: Callable[[str, float | None], Holder]
) -> GpuPublic:
    inv = broker.inventory
    state = inv.state(g.id)
    holders = [holder(state.whole_owner, None)] if state.whole_owner else []
    for sharer in sorted(state.sharers):
        alloc = inv.allocation(sharer)
        holders.append(holder(sharer, alloc.memory_gib if alloc else None))
    mode: Literal["free", "whole", "shared"] = (
        "whole" if state.whole_owner else "shared" if state.sharers else "free"
    )
    cordon = broker.cordon_mode(g.id)
    return GpuPublic(
        id=g.id,
        host=g.host,
        index=g.index,
        type=g.type,
        memory_gib=g.memory_gib,
        allocated_gib=g.memory_gib if state.whole_owner else state.used_gib,
        free_gib=inv.free_gib(g.id),
        pool=g.pool,
        pool_rank=g.pool_rank,
        price_per_hour=g.price_per_hour,
        labels=dict(g.labels),
        cordon="drain" if cordon == "drain" else "cordon" if cordon or g.cordoned else None,
        mode=mode,
        instances=holders,
    )


def _queue_entry(
    broker: GpuBroker,
    entry: Waiting,
    names: dict[str, InstanceLabel],
    describe: Describe,
) -> QueueEntry:
    info = broker.queue_info(entry.instance_id)
    label = names.get(entry.instance_id, UNKNOWN)
    return QueueEntry(
        instance_id=entry.instance_id,
        name=label.name,
        owner=label.owner,
        position=info.position if info else 0,
        priority=entry.priority,
        since=datetime.fromtimestamp(entry.enqueued_at, UTC),
        estimate_s=info.estimate_s if info else None,
        wants=describe(entry.request),
    )


async def set_cordon(
    gw: GatewayDep,
    who: CurrentUser,
    client: ClientDep,
    gpu_id: str,
    mode: Literal["cordon", "drain"] | None,
) -> CordonResult:
    """Cordon, drain or uncordon (None) a card (admins only: the service refuses anyone else,
    and audits it)."""
    moved = await gw.instances.set_gpu_cordon(who, gpu_id, mode, client=client)
    return CordonResult(gpu_id=gpu_id, cordon=mode, moved=moved)


@router.post("/{gpu_id}/cordon")
async def cordon(gpu_id: str, gw: GatewayDep, who: CurrentUser, client: ClientDep) -> CordonResult:
    """Take no new engines on this GPU; what runs there stays."""
    return await set_cordon(gw, who, client, gpu_id, "cordon")


@router.post("/{gpu_id}/drain")
async def drain(gpu_id: str, gw: GatewayDep, who: CurrentUser, client: ClientDep) -> CordonResult:
    """Cordon, and restart the engines on it so they move to other GPUs (or queue)."""
    return await set_cordon(gw, who, client, gpu_id, "drain")


@router.post("/{gpu_id}/uncordon")
async def uncordon(
    gpu_id: str, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> CordonResult:
    """Put the GPU back into placement; queued instances that fit now start."""
    return await set_cordon(gw, who, client, gpu_id, None)
