"""A state move of an instance, as a value: its target, its reason and what it records with it.

The controller records a :class:`Move` in one transaction (see ``Controller._move``): the
transition and its event, the columns it sets (:meth:`Move.changes`), the start-progress events,
and the usage ledger (intervals opened by a move to starting, closed by a move to a state without
a process). Every field is explicit and typed; what a move always implies (a state without a
process frees the GPUs, a state other than queued leaves the queue) is derived here, not left to
each caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aigc_gateway.domain.states import HOLDS_PROCESS, InstanceState
from aigc_gateway.gpu import Placement
from aigc_gateway.store.instances import InstanceChanges
from aigc_gateway.store.tables import Instance
from aigc_gateway.store.usage import Holding

START_STEPS = ("queued", "preparing data", "launching engine", "waiting for the engine", "ready")
"""The start-progress steps an instance's events report (``step`` is an index into these)."""


@dataclass(frozen=True, slots=True)
class Progress:
    """One start-progress event: step ``step`` of :data:`START_STEPS`, with ``data``."""

    step: int
    data: Mapping[str, object] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return START_STEPS[self.step]

    def event_data(self) -> dict[str, object]:
        return {"step": self.step + 1, "steps": len(START_STEPS), **self.data}


@dataclass(frozen=True, slots=True)
class Launch:
    """What a move to starting records of the start: the generation and template revision it
    launches, when, on which GPUs, and the holdings the ledger opens (none for an engine that
    cannot be installed: it fails next). The previous engine's readiness, exit code and process
    are cleared (the process is set when the runtime has the engine)."""

    generation: int
    template_revision_id: int
    template_version: str
    at: datetime
    placement: Placement
    holdings: Sequence[Holding] = ()

    def changes(self) -> InstanceChanges:
        changes: InstanceChanges = {
            "launched_generation": self.generation,
            "template_revision_id": self.template_revision_id,
            "started_at": self.at,
            "ready_at": None,
            "exit_code": None,
            "pid": None,
        }
        if self.placement.gpu_ids:
            changes["gpu_ids"] = list(self.placement.gpu_ids)
            changes["gpu_memory_gib"] = self.placement.memory_gib
            changes["gpu_since"] = self.at
            changes["placement"] = self.placement.explanation
        return changes


@dataclass(frozen=True, slots=True)
class Move:
    """``inst → target`` because of ``reason``, and what is recorded with it.

    ``None`` in an optional field means "left as it is"."""

    target: InstanceState
    reason: str
    progress: tuple[Progress, ...] = ()
    """Start-progress events recorded with the move."""
    launch: Launch | None = None
    """A move to starting: what it records of the start, and the ledger it opens."""
    ended_at: datetime | None = None
    """A move to a state without a process: when the engine ended, where known (else the ledger
    closes at the last time it was seen alive)."""
    ready_at: datetime | None = None
    pid: int | None = None
    endpoint: str | None = None
    exit_code: int | None = None
    queued_at: datetime | None = None
    """A move to queued: since when it waits."""
    queue_priority: int | None = None

    def __post_init__(self) -> None:
        if self.launch is not None and self.target is not InstanceState.STARTING:
            raise ValueError("only a move to starting records a launch")

    def changes(self, inst: Instance, *, frees_gpus: bool) -> InstanceChanges:
        """The columns this move sets on ``inst``: its own fields, the launch's, the GPUs
        cleared when it ``frees_gpus``, and the queue time cleared unless it is to queued."""
        changes: InstanceChanges = self.launch.changes() if self.launch is not None else {}
        if self.ready_at is not None:
            changes["ready_at"] = self.ready_at
        if self.pid is not None:
            changes["pid"] = self.pid
        if self.endpoint is not None:
            changes["endpoint"] = self.endpoint
        if self.exit_code is not None:
            changes["exit_code"] = self.exit_code
        if self.queued_at is not None:
            changes["queued_at"] = self.queued_at
        if self.queue_priority is not None:
            changes["queue_priority"] = self.queue_priority
        if frees_gpus:
            changes["gpu_ids"] = changes["gpu_memory_gib"] = changes["gpu_since"] = None
        if self.target is not InstanceState.QUEUED and inst.queued_at is not None:
            changes["queued_at"] = None
        return changes

    def closes_ledger(self, source: InstanceState) -> bool:
        """Whether the move from ``source`` ends the engine's usage intervals."""
        return source in HOLDS_PROCESS and self.target not in HOLDS_PROCESS
