"""GPUs, in one place: the inventory (:mod:`.inventory`, discovery merged with the admin's
declared cards), the pure placement policy (:mod:`.placement`, no I/O, tested exhaustively and
benchmarked alone), the queue of requests waiting for capacity (:mod:`.queue`), the broker that
holds allocations and admits from the queue (:mod:`.broker`) and the memory each engine holds
(:mod:`.usage`). How a host finds and partitions cards (NVML, MPS) is the runtime's.
"""

from __future__ import annotations

from aigc_gateway.gpu.placement import (
    Allocation,
    Gpu,
    Inventory,
    Placement,
    PlacementError,
    Request,
    Unplaceable,
    place,
)
from aigc_gateway.gpu.queue import Admission, ReleaseHistory, Waiting, WaitQueue, competes

__all__ = [
    "Admission",
    "Allocation",
    "Gpu",
    "Inventory",
    "Placement",
    "PlacementError",
    "ReleaseHistory",
    "Request",
    "Unplaceable",
    "WaitQueue",
    "Waiting",
    "competes",
    "place",
]
