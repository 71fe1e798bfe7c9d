"""Jobs of the demo engine: a queue, simulated diffusion steps and progress events.

One job runs at a time (like a single GPU); later jobs wait in the ``queued``
state. A running job sleeps ``step_delay`` seconds per step, then renders its
image (in a worker thread) and stores it. Every state change is appended to the
job's event history, so a subscriber that arrives late, or reconnects with a
``Last-Event-ID``, still receives every event in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from .images import render_png
from .store import OutputStore

__all__ = ["MAX_SEED", "Engine", "Job", "JobEvent", "JobState"]

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "error"]
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's history: ``progress``, ``done`` or ``error``, with its payload."""

    index: int
    name: str
    data: dict[str, Any]


@dataclass
class Job:
    """A generation request and its progress."""

    id: str
    prompt: str
    seed: int
    steps: int
    created: float
    state: JobState = "queued"
    step: int = 0
    output: str | None = None
    error: str | None = None
    events: list[JobEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def finished(self) -> bool:
        """True once the job is ``done`` or failed; no more events will follow."""
        return self.state in ("done", "error")

    def to_json(self) -> dict[str, Any]:
        """The job as returned by ``GET /api/jobs/{id}``."""
        return {
            "id": self.id,
            "state": self.state,
            "step": self.step,
            "steps": self.steps,
            "output": self.output,
            "error": self.error,
            "prompt": self.prompt,
            "seed": self.seed,
        }

    def emit(self, name: str, data: dict[str, Any]) -> None:
        """Record an event and wake every subscriber."""
        self.events.append(JobEvent(len(self.events), name, data))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(
        self, after: int = -1, stop: anyio.Event | None = None
    ) -> AsyncIterator[JobEvent]:
        """Yield the events with ``index > after``, waiting for new ones until the job ends.

        Setting ``stop`` (e.g. on server shutdown) ends the iteration early.
        """
        position = max(after + 1, 0)
        while True:
            while position < len(self.events):
                yield self.events[position]
                position += 1
            if self.finished or (stop is not None and stop.is_set()):
                return
            await self._wait_for_change(stop)

    async def _wait_for_change(self, stop: anyio.Event | None) -> None:
        changed = self._changed
        if stop is None:
            await changed.wait()
            return
        async with anyio.create_task_group() as group:

            async def on_stop() -> None:
                await stop.wait()
                group.cancel_scope.cancel()

            group.start_soon(on_stop)
            await changed.wait()
            group.cancel_scope.cancel()


class Engine:
    """Runs jobs one at a time and keeps the most recent ones in memory."""

    def __init__(
        self,
        store: OutputStore,
        steps: int,
        step_delay: float,
        *,
        max_jobs: int = 1000,
        image_size: int = 256,
    ) -> None:
        self.store = store
        self.steps = steps
        self.step_delay = step_delay
        self.image_size = image_size
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._gpu = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, prompt: str, seed: int | None = None) -> Job:
        """Queue a job and start it in the background. Must be called on the event loop."""
        job = Job(
            id=uuid.uuid4().hex[:16],
            prompt=prompt,
            seed=random.randint(0, MAX_SEED) if seed is None else seed,
            steps=self.steps,
            created=time.time(),
        )
        self._jobs[job.id] = job
        self._forget_old_jobs()
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"demo-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, if it is still remembered."""
        return self._jobs.get(job_id)

    @property
    def queued(self) -> int:
        """Number of jobs waiting for the (simulated) GPU."""
        return sum(1 for job in self._jobs.values() if job.state == "queued")

    @property
    def busy(self) -> bool:
        """True while a job is running."""
        return any(job.state == "running" for job in self._jobs.values())

    async def aclose(self) -> None:
        """Cancel unfinished jobs and wait for their tasks to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _forget_old_jobs(self) -> None:
        while len(self._jobs) > self._max_jobs:
            oldest = next((jid for jid, job in self._jobs.items() if job.finished), None)
            if oldest is None:
                return
            del self._jobs[oldest]

    async def _run(self, job: Job) -> None:
        async with self._gpu:
            job.state = "running"
            job.emit("progress", {"step": 0, "steps": job.steps})
            try:
                for step in range(1, job.steps + 1):
                    await asyncio.sleep(self.step_delay)
                    job.step = step
                    job.emit("progress", {"step": step, "steps": job.steps})
                name = await asyncio.to_thread(self._render_and_store, job)
            except asyncio.CancelledError:
                job.state, job.error = "error", "cancelled"
                job.emit("error", {"error": job.error})
                raise
            except Exception as exc:
                logger.exception("demo job %s failed", job.id)
                job.state, job.error = "error", f"{type(exc).__name__}: {exc}"
                job.emit("error", {"error": job.error})
                return
            job.state, job.output = "done", name
            job.emit("done", {"output": name})

    def _render_and_store(self, job: Job) -> str:
        png = render_png(job.prompt, job.seed, self.image_size, self.image_size)
        meta = {
            "prompt": job.prompt,
            "seed": job.seed,
            "steps": job.steps,
            "job": job.id,
            "width": self.image_size,
            "height": self.image_size,
        }
        return self.store.save_output(png, meta)
