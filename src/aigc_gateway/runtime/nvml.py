"""This host's NVIDIA cards, as NVML reports them (the local runtime's GPU inventory)."""

from __future__ import annotations

from aigc_gateway.runtime.base import GpuDevice, GpuDiscovery

__all__ = ["discover"]


def discover(node: str = "local") -> GpuDiscovery:
    """GPUs NVML reports on this host, named as on ``node``, and a line saying what was found
    (or why nothing). Blocking: call it in a thread."""
    try:
        import pynvml
    except ImportError:
        return GpuDiscovery((), "no NVIDIA management library (nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuDiscovery((), f"no NVIDIA driver ({exc})")
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                GpuDevice(
                    id=str(pynvml.nvmlDeviceGetUUID(handle)),
                    node=node,
                    index=index,
                    model=str(pynvml.nvmlDeviceGetName(handle)),
                    memory_gib=round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return GpuDiscovery(tuple(found), f"{len(found)} GPU(s) found by NVML")
