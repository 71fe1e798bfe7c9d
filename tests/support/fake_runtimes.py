"""Runtimes with one failure each that the real (local) runtime cannot produce on demand, for
testing the controller on its own. Each is the real local runtime (real engine processes) except
for the one behaviour it fakes:

- :class:`HangingStart`: ``start`` never returns (a node that accepted the launch and went
  silent); cancelling it ends the wait.
- :class:`ExitsDuringStart`: the engine dies while ``start`` is still running, so ``start``
  itself already reports it ``EXITED`` with its code and output.
- :class:`FailingStop`: ``stop`` fails the first ``failures`` times (the engine's processes
  cannot be signalled, the node is unreachable), then works.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aigc_gateway.errors import PermanentError
from aigc_gateway.runtime.base import LaunchSpec, Phase, Workload
from aigc_gateway.runtime.local import LocalRuntime

__all__ = ["ExitsDuringStart", "FailingStop", "HangingStart"]


class HangingStart(LocalRuntime):
    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.entered = asyncio.Event()
        self.cancelled = 0
        self.stops: list[str] = []

    async def start(self, spec: LaunchSpec) -> Workload:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")

    async def stop(self, instance_id: str, *, grace: float) -> Workload:
        self.stops.append(instance_id)
        return await super().stop(instance_id, grace=grace)


class ExitsDuringStart(LocalRuntime):
    """Launches the engine for real, and returns from ``start`` only once it has exited (use a
    template whose engine exits before it is ready)."""

    async def start(self, spec: LaunchSpec) -> Workload:
        await super().start(spec)
        async with asyncio.timeout(30):
            while (seen := await self.observe(spec.instance_id)).phase is not Phase.EXITED:
                await asyncio.sleep(0.01)
        return seen


class FailingStop(LocalRuntime):
    def __init__(self, *, state_dir: Path, failures: int) -> None:
        super().__init__(state_dir=state_dir)
        self.failures = failures
        self.attempts = 0

    async def stop(self, instance_id: str, *, grace: float) -> Workload:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise PermanentError("cannot signal the engine's processes: operation not permitted")
        return await super().stop(instance_id, grace=grace)
