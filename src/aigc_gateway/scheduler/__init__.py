"""GPU scheduling.

:mod:`.placement` is the pure placement policy: it decides *where* an instance's GPUs go from an
in-memory inventory, and does no I/O, so it can be tested exhaustively and benchmarked alone.
:mod:`.queue` orders the requests that wait for capacity and estimates their wait.
"""

from __future__ import annotations

from aigc_gateway.scheduler.placement import (
    Allocation,
    Gpu,
    Inventory,
    Placement,
    PlacementError,
    Request,
    Unplaceable,
    place,
)
from aigc_gateway.scheduler.queue import Admission, ReleaseHistory, Waiting, WaitQueue, competes

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
