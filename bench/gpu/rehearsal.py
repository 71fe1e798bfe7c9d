"""Just enough of ``torch`` for ``torch_engine.py --rehearse`` on a host without a GPU: memory
is counted, not allocated, and the MPS pinned-memory limit in the environment is enforced by
arithmetic. Only ``check.py --rehearse`` uses it, to try the script before device time is spent."""

from __future__ import annotations

import os
from typing import Any

_used = 512 * 2**20  # a CUDA context


def _limit() -> int:
    value = os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "")
    if value.startswith("0=") and value.endswith("M"):
        return int(value[2:-1]) * 2**20
    return 80 * 2**30


class OutOfMemoryError(RuntimeError):
    pass


uint8 = "uint8"


class _Tensor:
    def __init__(self, n: int) -> None:
        self.n = n

    def numel(self) -> int:
        return self.n

    def fill_(self, value: int) -> None:
        pass


def zeros(n: int, device: str) -> _Tensor:
    return _Tensor(n)


def empty(n: int, dtype: Any, device: str) -> _Tensor:
    global _used
    if _used + n > _limit():
        raise OutOfMemoryError("CUDA out of memory (rehearsal: past the MPS limit)")
    _used += n
    return _Tensor(n)


class cuda:
    @staticmethod
    def synchronize() -> None:
        pass

    @staticmethod
    def mem_get_info() -> tuple[int, int]:
        return _limit() - _used, _limit()

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def get_device_name(index: int) -> str:
        return "rehearsal"

    @staticmethod
    def empty_cache() -> None:
        global _used
        _used = 512 * 2**20
