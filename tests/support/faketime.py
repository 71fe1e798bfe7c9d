"""Fake time for the controller's loops: no test waits for a back-off or a period to pass."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping


class FakeTime:
    """A ``sleep`` for :class:`~aigc_gateway.lifecycle.controller.Controller` (and the template
    watcher) that records every wait by the waiting task's name and returns at once.

    ``rounds`` maps a task-name prefix to how many waits of such a task return; the next ones
    are held until :meth:`release` or until the task is cancelled, so each loop runs a known
    number of times. Tasks whose name matches no prefix are held at their first wait (a periodic
    job that should stay out of the test)."""

    def __init__(self, rounds: Mapping[str, int]) -> None:
        self.rounds = dict(rounds)
        self.waits: dict[str, list[float]] = defaultdict(list)
        self._changed = asyncio.Event()
        self._held: dict[str, asyncio.Event] = {}

    async def sleep(self, delay: float) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task else "?"
        self.waits[name].append(delay)
        self._changed.set()
        allowed = next((n for p, n in self.rounds.items() if name.startswith(p)), 0)
        if len(self.waits[name]) > allowed:
            gate = self._held[name] = asyncio.Event()
            await gate.wait()
        await asyncio.sleep(0)

    def release(self, name: str) -> None:
        """Let the task ``name``, held at a wait, go on (its next wait is held again)."""
        self._held.pop(name).set()

    async def until(self, check: Callable[[], bool], timeout: float = 60) -> None:
        """Return once ``check()`` holds, re-checking after each recorded wait."""
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()
