"""GPU memory in use per engine, read back from NVML.

NVML lists the processes using each card with the memory each holds. Every engine runs in its
own session (the local runtime starts it with ``setsid``), so a process's session id names the
engine it belongs to, children and MPS clients included. Readings are cached briefly: listing
instances must not cost an NVML round trip per row. Hosts without NVML read as "no figures".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)


def read_memory_by_session() -> dict[int, int]:
    """Bytes of GPU memory used, summed by process session id ({} without NVML)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    used: dict[int, int] = {}
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            procs: list[Any] = []
            for lister in (
                pynvml.nvmlDeviceGetComputeRunningProcesses,
                getattr(pynvml, "nvmlDeviceGetMPSComputeRunningProcesses", None),
            ):
                if lister is None:
                    continue
                with contextlib.suppress(pynvml.NVMLError):
                    procs.extend(lister(handle))
            seen: set[int] = set()
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    sid = os.getsid(proc.pid)
                except OSError:
                    continue  # gone meanwhile, or not visible from here
                used[sid] = used.get(sid, 0) + int(proc.usedGpuMemory or 0)
    finally:
        pynvml.nvmlShutdown()
    return used


class GpuUsage:
    def __init__(self, *, ttl_s: float = 2.0) -> None:
        self._ttl_s = ttl_s
        self._at = float("-inf")
        self._value: dict[int, int] = {}
        self._lock = asyncio.Lock()

    async def by_session(self) -> dict[int, int]:
        async with self._lock:
            if time.monotonic() - self._at > self._ttl_s:
                try:
                    self._value = await asyncio.to_thread(read_memory_by_session)
                except Exception:  # a driver hiccup must not break listing instances
                    log.exception("reading GPU memory from NVML failed")
                    self._value = {}
                self._at = time.monotonic()
            return self._value
