"""GPU scheduling.

:mod:`.placement` is the pure placement policy: it decides *where* an instance's GPUs go from an
in-memory inventory, and does no I/O, so it can be tested exhaustively and benchmarked alone.
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

__all__ = [
    "Allocation",
    "Gpu",
    "Inventory",
    "Placement",
    "PlacementError",
    "Request",
    "Unplaceable",
    "place",
]
