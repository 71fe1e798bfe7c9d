"""Build the GPU inventory the scheduler places on.

The cards the runtime reports (``Runtime.gpus()``: this host's, found by NVML, for the local
runtime; by UUID, each on its node), merged with what the admin declares (``gpus:`` in the
config file): an entry naming a discovered card's UUID sets its pool, rank, price, labels and
cordon; other entries add cards NVML cannot see (other hosts, planning, tests). A host with no
NVIDIA driver and nothing declared has an empty inventory and runs CPU templates only.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from aigc_gateway.errors import UserError
from aigc_gateway.gpu import Gpu, Inventory
from aigc_gateway.runtime.base import GpuDiscovery
from aigc_gateway.settings import Settings

log = logging.getLogger(__name__)


def from_runtime(discovery: GpuDiscovery) -> list[Gpu]:
    """The scheduler's view of the cards a runtime reported: on the node it named, typed by
    model, in the pool the runtime named (a Ray node's label) or the default one, until
    :func:`merge` applies the admin's declarations."""
    return [
        Gpu(
            id=d.id,
            host=d.node,
            index=d.index,
            type=_type_name(d.model),
            memory_gib=d.memory_gib,
            pool=d.pool or "local",
            pool_rank=1 if d.pool_rank is None else d.pool_rank,
            price_per_hour=0.0,
        )
        for d in discovery.devices
    ]


def _type_name(model: str) -> str:
    """``NVIDIA GeForce RTX 4090`` → ``rtx4090``; ``NVIDIA H100 80GB HBM3`` → ``h100``."""
    words = model.lower().replace("nvidia", "").replace("geforce", "").split()
    compact = "".join(
        w for w in words if not w.endswith(("gb", "hbm3", "hbm2e", "pcie", "sxm", "sxm5", "nvl"))
    )
    return compact or "gpu"


def merge(found: list[Gpu], settings: Settings) -> list[Gpu]:
    """Discovered cards annotated by the declared entries naming them (by UUID), then the
    declared cards NVML does not see. Unannotated discovered cards get the default pool, rank
    and price by type from the settings."""
    by_id = {g.id: g for g in found}
    annotated: dict[str, Gpu] = {}
    extra: list[Gpu] = []
    for n, d in enumerate(settings.gpus):
        base = by_id.get(d.id)
        labels = tuple(sorted(d.labels.items()))
        if base is not None:
            annotated[d.id] = replace(
                base,
                type=d.type or base.type,
                memory_gib=d.memory_gib or base.memory_gib,
                pool=d.pool,
                pool_rank=d.pool_rank,
                price_per_hour=d.price_per_hour,
                cordoned=d.cordoned,
                labels=labels,
            )
            continue
        if d.type is None or d.memory_gib is None:
            raise UserError(
                f"settings gpus[{n}] ({d.id}): not a GPU found on this host, so it needs "
                "`type` and `memory_gib`; or use the UUID `nvidia-smi -L` shows",
                code="invalid_settings",
            )
        extra.append(
            Gpu(
                id=d.id,
                host=d.host,
                index=d.index,
                type=d.type,
                memory_gib=d.memory_gib,
                pool=d.pool,
                pool_rank=d.pool_rank,
                price_per_hour=d.price_per_hour,
                cordoned=d.cordoned,
                labels=labels,
            )
        )
    merged = [
        annotated.get(
            g.id,
            replace(
                g,
                pool=settings.gpu_pool,
                pool_rank=settings.gpu_pool_rank,
                price_per_hour=settings.gpu_prices.get(g.type, 0.0),
            ),
        )
        for g in found
    ]
    return merged + extra


def build_inventory(settings: Settings, discovery: GpuDiscovery | None) -> tuple[Inventory, str]:
    """The inventory from what the runtime found (``None``: discovery is off) and the settings."""
    if discovery is not None:
        found, note = from_runtime(discovery), discovery.note
        log.info("GPU discovery: %s", note)
    else:
        found, note = [], "GPU discovery is off"
    gpus = merge(found, settings)
    declared = len(gpus) - len(found)
    if not gpus:
        return Inventory([]), note if settings.gpu_discovery else (
            "GPU discovery is off and no GPU is declared"
        )
    parts = []
    if found:
        parts.append(f"{len(found)} found by the runtime")
    if declared:
        parts.append(f"{declared} declared in the settings")
    return Inventory(gpus), f"{len(gpus)} GPU(s): " + ", ".join(parts)
