"""The reconcile decision: what the controller does next for one instance.

Pure: it compares what users want (desired state, a pending restart) with the instance's recorded
state and what the runtime observes, and names one step. The controller performs the step, records
the transition, and asks again until the answer is :attr:`Step.NOTHING` or :attr:`Step.AWAIT_READY`.
Every combination of inputs has an answer (tested exhaustively), so no input leaves it stuck.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.domain.states import DesiredState, InstanceState


class Phase(enum.StrEnum):
    """What the runtime sees of an instance's engine."""

    ABSENT = "absent"
    """No process: never started, stopped, or removed."""
    STARTING = "starting"
    """A process is alive and has not passed its readiness check yet."""
    READY = "ready"
    """A process is alive and passed its readiness check."""
    EXITED = "exited"
    """The process ended by itself; the exit code and log tail are known."""

    @property
    def alive(self) -> bool:
        return self in (Phase.STARTING, Phase.READY)


class Step(enum.StrEnum):
    NOTHING = "nothing"
    """Stable: wait for a user action or an observed change."""
    LAUNCH = "launch"
    """Take the GPUs the template asks for (or join the queue), move to starting and ask the
    runtime to start the engine. For an instance already starting whose engine never reached the
    runtime: ask the runtime (again; ``start`` is idempotent)."""
    AWAIT_READY = "await_ready"
    """Wait for the readiness check (or an exit, or a change of desired state)."""
    MARK_RUNNING = "mark_running"
    STOP = "stop"
    """Move to stopping and ask the runtime to stop the engine (idempotent)."""
    MARK_PAUSED = "mark_paused"
    MARK_FAILED = "mark_failed"
    """The engine exited (or vanished) while it should run."""
    DELETE = "delete"
    """Move to deleting, remove what must go, then deleted."""


@dataclass(frozen=True, slots=True)
class Situation:
    desired: DesiredState
    state: InstanceState
    phase: Phase
    restart_pending: bool = False
    spawned: bool = True
    """The runtime took the engine of the current start (its process was recorded). False
    between recording "starting" and the runtime's answer: after a crash of the gateway there,
    or a temporary error of the runtime, the start is still to be made, not a failure."""


def decide(s: Situation) -> Step:
    """Name the next step for ``s``."""
    st, phase = s.state, s.phase
    if st is InstanceState.DELETED:
        return Step.NOTHING
    if s.desired is DesiredState.DELETED:
        return Step.STOP if phase.alive else Step.DELETE
    if st is InstanceState.DELETING:
        # Deletion was started by an earlier desired state; it is not undone.
        return Step.STOP if phase.alive else Step.DELETE
    if s.desired is DesiredState.PAUSED:
        return _toward_paused(st, phase)
    if st is InstanceState.STARTING and phase is Phase.ABSENT and not s.spawned:
        return Step.LAUNCH
    return _toward_running(st, phase, s.restart_pending)


def _toward_paused(st: InstanceState, phase: Phase) -> Step:
    if phase.alive:
        return Step.STOP
    if st in (InstanceState.STARTING, InstanceState.RUNNING):
        return Step.STOP
    if st in (InstanceState.STOPPING, InstanceState.PENDING, InstanceState.QUEUED):
        return Step.MARK_PAUSED  # for a queued instance: it leaves the queue
    return Step.NOTHING  # paused, or failed (pausing a failed engine changes nothing)


def _toward_running(st: InstanceState, phase: Phase, restart_pending: bool) -> Step:
    if st is InstanceState.STOPPING:
        return Step.STOP if phase.alive else Step.MARK_PAUSED
    if phase.alive:
        return _alive_toward_running(st, phase, restart_pending)
    if st in (InstanceState.STARTING, InstanceState.RUNNING):
        return Step.MARK_FAILED
    if st is InstanceState.FAILED:
        return Step.LAUNCH if restart_pending else Step.NOTHING
    return Step.LAUNCH  # pending, paused, or queued (the launch asks for GPUs again)


def _alive_toward_running(st: InstanceState, phase: Phase, restart_pending: bool) -> Step:
    if restart_pending and st in (InstanceState.RUNNING, InstanceState.FAILED):
        return Step.STOP
    if st is InstanceState.FAILED:
        # A process outlived its failure (e.g. a readiness time-out): clear it away.
        return Step.STOP
    if st is InstanceState.RUNNING:
        return Step.NOTHING
    if phase is Phase.READY:
        return Step.MARK_RUNNING if st is InstanceState.STARTING else Step.LAUNCH
    # Alive, not ready yet.
    return Step.AWAIT_READY if st is InstanceState.STARTING else Step.LAUNCH
