"""The GPU inventory, for administrators: each card with its pool, price and what holds it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from aigc_gateway.api.deps import CurrentUser, GatewayDep
from aigc_gateway.auth.principal import require_admin

router = APIRouter(prefix="/api/gpus", tags=["gpus"])


class GpuPublic(BaseModel):
    id: str
    host: str
    index: int
    type: str
    memory_gib: float
    free_gib: float
    pool: str
    pool_rank: int
    price_per_hour: float
    cordoned: bool
    instances: list[str]


class GpuInventory(BaseModel):
    source: str
    gpus: list[GpuPublic]


@router.get("")
async def list_gpus(gw: GatewayDep, who: CurrentUser) -> GpuInventory:
    require_admin(who)
    inv = gw.gpus
    holders: dict[str, list[str]] = {}
    for allocation in inv.allocations:
        for gpu_id in allocation.gpu_ids:
            holders.setdefault(gpu_id, []).append(allocation.instance_id)
    return GpuInventory(
        source=gw.gpu_note,
        gpus=[
            GpuPublic(
                id=g.id,
                host=g.host,
                index=g.index,
                type=g.type,
                memory_gib=g.memory_gib,
                free_gib=inv.free_gib(g.id),
                pool=g.pool,
                pool_rank=g.pool_rank,
                price_per_hour=g.price_per_hour,
                cordoned=g.cordoned,
                instances=holders.get(g.id, []),
            )
            for g in inv.gpus
        ],
    )
