"""Build the GPU inventory the scheduler places on.

An inventory declared in the settings (``gpus:`` in the config file: for planning, tests, or hosts
whose cards NVML cannot see) wins; otherwise the cards NVML finds on this host are used, in pool
``local``. A host with no NVIDIA driver has an empty inventory and runs CPU templates only.
"""

from __future__ import annotations

import logging

from aigc_gateway.scheduler import Gpu, Inventory
from aigc_gateway.settings import Settings

log = logging.getLogger(__name__)


def discover() -> tuple[list[Gpu], str]:
    """GPUs NVML reports on this host, and a line saying what was found (or why nothing)."""
    try:
        import pynvml
    except ImportError:
        return [], "no NVIDIA management library (nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA driver ({exc})"
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = str(pynvml.nvmlDeviceGetName(handle))
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
            uuid = str(pynvml.nvmlDeviceGetUUID(handle))
            found.append(
                Gpu(
                    id=uuid,
                    host="local",
                    index=index,
                    type=_type_name(name),
                    memory_gib=round(memory, 1),
                    pool="local",
                    pool_rank=1,
                    price_per_hour=0.0,
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return found, f"{len(found)} GPU(s) found by NVML"


def _type_name(model: str) -> str:
    """``NVIDIA GeForce RTX 4090`` → ``rtx4090``; ``NVIDIA H100 80GB HBM3`` → ``h100``."""
    words = model.lower().replace("nvidia", "").replace("geforce", "").split()
    compact = "".join(
        w for w in words if not w.endswith(("gb", "hbm3", "hbm2e", "pcie", "sxm", "sxm5", "nvl"))
    )
    return compact or "gpu"


def build_inventory(settings: Settings) -> tuple[Inventory, str]:
    if settings.gpus:
        declared = [
            Gpu(
                id=g.id,
                host=g.host,
                index=g.index,
                type=g.type,
                memory_gib=g.memory_gib,
                pool=g.pool,
                pool_rank=g.pool_rank,
                price_per_hour=g.price_per_hour,
                cordoned=g.cordoned,
            )
            for g in settings.gpus
        ]
        return Inventory(declared), f"{len(declared)} GPU(s) declared in the settings"
    if not settings.gpu_discovery:
        return Inventory([]), "GPU discovery is off and no GPU is declared"
    found, note = discover()
    log.info("GPU inventory: %s", note)
    return Inventory(found), note
