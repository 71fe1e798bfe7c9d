"""Which ``/dev/nvidiaN`` nodes a GPU grant means: the cards' minor numbers.

A grant names cards by UUID (``GPU-…``) or index. The device node of a card is
``/dev/nvidia<minor>``, and the minor number is NVML's (``nvmlDeviceGetMinorNumber``), which is
not always the CUDA or NVML index. Without NVML (no driver, a CPU host) an index is taken as its
own minor and a UUID matches nothing: such a grant gets no device node, and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

__all__ = ["device_minors", "nvml_minor"]

log = logging.getLogger(__name__)


def device_minors(
    devices: Iterable[str], lookup: Callable[[str], int | None] | None = None
) -> list[int]:
    """The minor numbers of the granted ``devices`` (``lookup``: NVML's, by default)."""
    find = lookup or nvml_minor
    minors = []
    for device in devices:
        minor = find(device)
        if minor is None and device.isdigit():
            minor = int(device)
        if minor is None:
            log.warning("no device node found for GPU %s: the engine cannot use it", device)
            continue
        minors.append(minor)
    return minors


def nvml_minor(device: str) -> int | None:
    """NVML's minor number of the card named by UUID or index, or ``None`` without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if device.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(device)
        return int(pynvml.nvmlDeviceGetMinorNumber(handle))
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
