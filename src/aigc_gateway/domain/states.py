"""The instance state machine.

An instance has a *desired* state set by users (running, paused, deleted) and an *actual* state
moved only by the lifecycle controller. Every move goes through :func:`transition`, which refuses
illegal moves with :class:`IllegalTransition`, so the store can never hold an impossible history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.errors import InternalError


class InstanceState(enum.StrEnum):
    PENDING = "pending"
    """Created; the controller has not acted on it yet."""
    QUEUED = "queued"
    """Wants to run, but the GPUs it asks for are all busy: it waits in the queue and starts by
    itself when capacity frees up. Holds no process and no GPU."""
    STARTING = "starting"
    """The engine process was launched and is not ready yet."""
    RUNNING = "running"
    """The engine answers its readiness check."""
    STOPPING = "stopping"
    """The engine is being stopped (pause, restart or delete)."""
    PAUSED = "paused"
    """No engine process; the user's data is kept."""
    FAILED = "failed"
    """The engine exited, never became ready, or could not be launched; ``reason`` says why."""
    DELETING = "deleting"
    """Being removed (and its data, if asked)."""
    DELETED = "deleted"
    """Gone. Terminal."""


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DELETED = "deleted"


S = InstanceState

ALLOWED: dict[InstanceState, frozenset[InstanceState]] = {
    S.PENDING: frozenset({S.STARTING, S.QUEUED, S.PAUSED, S.FAILED, S.DELETING}),
    S.QUEUED: frozenset({S.STARTING, S.PAUSED, S.FAILED, S.DELETING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.FAILED}),
    S.RUNNING: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.PAUSED, S.FAILED}),
    S.PAUSED: frozenset({S.STARTING, S.QUEUED, S.DELETING}),
    S.FAILED: frozenset({S.STARTING, S.QUEUED, S.STOPPING, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.FAILED}),
    S.DELETED: frozenset(),
}
"""Legal moves. A failed instance may still have a process (a readiness time-out), hence
failed → stopping; deleting goes through a stopped state so no engine outlives its record."""

STABLE: frozenset[InstanceState] = frozenset({S.QUEUED, S.RUNNING, S.PAUSED, S.FAILED, S.DELETED})
"""States in which the controller waits for a user action, an observed change, or (queued)
capacity."""

HOLDS_PROCESS: frozenset[InstanceState] = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
"""States in which an engine process may exist."""


class IllegalTransition(InternalError):
    """A move the state machine forbids was attempted: a bug in the caller (the controller), not
    a concurrent change (that is the store's ``Conflict``)."""

    code = "illegal_transition"


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded move of an instance's actual state, with the reason shown to users."""

    source: InstanceState
    target: InstanceState
    reason: str


def can_transition(source: InstanceState, target: InstanceState) -> bool:
    return target in ALLOWED[source]


def transition(source: InstanceState, target: InstanceState, reason: str) -> Transition:
    """Return the move ``source → target`` or raise :class:`IllegalTransition`."""
    if not can_transition(source, target):
        raise IllegalTransition(f"an instance cannot go from {source.value} to {target.value}")
    return Transition(source, target, reason)
