"""Which user actions an instance's state allows: one answer for the cards, the admin list and
the API.

Pure. :func:`judge` says, for one action on an instance in a given state, whether it is *applied*
(it changes what the instance is asked to do), a harmless *repeat* (accepted, nothing changes: a
retried pause, a double-clicked restart) or *refused* (with the reason shown to the user).
:func:`allowed_actions` is what a page offers: the actions that are applied. Sharing rules (who
may delete) are checked elsewhere; this module only knows states.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.domain.states import DesiredState, InstanceState

S = InstanceState
D = DesiredState


class UserAction(enum.StrEnum):
    """What a user can ask of an instance, in the order pages show them."""

    OPEN = "open"
    """Go to the engine's pages (while it runs or is on its way to running)."""
    RESUME = "resume"
    """Start the engine again on the same data (the API also calls it ``start``)."""
    PAUSE = "pause"
    """Stop the engine, keep the data."""
    LEAVE_QUEUE = "leave_queue"
    """Stop waiting for a GPU (the API's ``pause`` of a queued instance)."""
    RESTART = "restart"
    """Stop the engine and launch a fresh one (or launch again after a failure)."""
    DELETE = "delete"


class Outcome(enum.StrEnum):
    APPLY = "apply"
    """The action changes the desired state (or asks for a new launch)."""
    REPEAT = "repeat"
    """Accepted and changes nothing: the instance is already on its way (idempotence)."""
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    """Why it is refused, for the user (empty unless refused)."""

    @property
    def accepted(self) -> bool:
        return self.outcome is not Outcome.REFUSE


APPLY = Verdict(Outcome.APPLY)
REPEAT = Verdict(Outcome.REPEAT)

GOING_TO_RUN = frozenset({S.PENDING, S.STARTING, S.RUNNING, S.STOPPING, S.PAUSED})
"""States from which an instance that should run gets there by itself (no GPU wait)."""
FRESH_LAUNCH_COMING = frozenset({S.PENDING, S.STARTING, S.STOPPING, S.PAUSED})
"""With desired running: a new engine is being (or about to be) launched, so a restart is moot."""


def _refuse(reason: str) -> Verdict:
    return Verdict(Outcome.REFUSE, reason)


def judge(
    action: UserAction,
    *,
    state: InstanceState,
    desired: DesiredState,
    restart_pending: bool = False,
) -> Verdict:
    """The verdict on ``action`` for an instance in ``state`` that is asked to be ``desired``;
    ``restart_pending``: a restart (or relaunch) was asked for and not launched yet."""
    if state in (S.DELETING, S.DELETED) or desired is D.DELETED:
        if action is UserAction.DELETE:
            return REPEAT
        return _refuse("this instance is being deleted")
    return _JUDGES[action](state, desired, restart_pending)


def allowed_actions(
    *, state: InstanceState, desired: DesiredState, restart_pending: bool = False
) -> tuple[UserAction, ...]:
    """The actions a page offers for this state: those :func:`judge` applies, in page order.
    A failed instance offers restart (and delete) only: resume relaunches it too, a second
    button for the same thing, and pause has no engine to stop (the API still accepts both)."""
    return tuple(
        a
        for a in UserAction
        if judge(a, state=state, desired=desired, restart_pending=restart_pending).outcome
        is Outcome.APPLY
        and not (state is S.FAILED and a in (UserAction.RESUME, UserAction.PAUSE))
    )


def api_action(verb: str, state: InstanceState) -> UserAction:
    """The user action an API verb (``start``, ``resume``, ``pause``, ``restart``) stands for:
    ``pause`` of a queued instance leaves the queue; ``start`` is ``resume``."""
    if verb == "start":
        return UserAction.RESUME
    if verb == "pause" and state is S.QUEUED:
        return UserAction.LEAVE_QUEUE
    return UserAction(verb)


def effect(
    action: UserAction, *, state: InstanceState, desired: DesiredState, restart_pending: bool
) -> tuple[DesiredState, bool]:
    """What an accepted ``resume``/``pause``/``leave_queue``/``restart`` asks for: the new
    desired state and whether a new launch is pending. A resume after a failure relaunches."""
    if action in (UserAction.PAUSE, UserAction.LEAVE_QUEUE):
        return D.PAUSED, restart_pending
    if action is UserAction.RESUME:
        return D.RUNNING, restart_pending or state is S.FAILED
    if action is UserAction.RESTART:
        return D.RUNNING, True
    raise ValueError(f"{action.value} does not change the desired state")


def _open(state: InstanceState, desired: DesiredState, _: bool) -> Verdict:
    if desired is D.RUNNING and state in GOING_TO_RUN:
        return APPLY
    if state is S.QUEUED:
        return _refuse("this instance is waiting for a GPU; it can be opened once it runs")
    if state is S.FAILED:
        return _refuse("this instance has failed; restart it first")
    return _refuse("this instance is paused; resume it first")


def _resume(state: InstanceState, desired: DesiredState, restart_pending: bool) -> Verdict:
    if desired is D.PAUSED:
        return APPLY
    if state is S.FAILED and not restart_pending:
        return APPLY  # a resume after a failure relaunches
    return REPEAT


def _pause(state: InstanceState, desired: DesiredState, _: bool) -> Verdict:
    if desired is D.PAUSED:
        return REPEAT
    if state is S.QUEUED:
        return _refuse("this instance is waiting for a GPU; leave the queue instead")
    return APPLY  # for a failed instance it only records the wish (pages offer restart)


def _leave_queue(state: InstanceState, desired: DesiredState, _: bool) -> Verdict:
    if state is S.QUEUED:
        return APPLY if desired is D.RUNNING else REPEAT
    return _refuse("this instance is not waiting for a GPU")


def _restart(state: InstanceState, desired: DesiredState, restart_pending: bool) -> Verdict:
    if state is S.FAILED:
        return REPEAT if restart_pending and desired is D.RUNNING else APPLY
    if desired is D.PAUSED:
        return _refuse(f"this instance is {_PAUSING[state]}; resume it instead")
    if state is S.QUEUED:
        return _refuse("this instance is waiting for a GPU; it starts by itself")
    if restart_pending or state in FRESH_LAUNCH_COMING:
        return REPEAT  # a fresh engine is on its way already (e.g. a double click)
    return APPLY  # running


def _delete(state: InstanceState, desired: DesiredState, _: bool) -> Verdict:
    return APPLY


_PAUSING = {
    S.PAUSED: "paused",
    S.STOPPING: "being paused",
    S.RUNNING: "being paused",
    S.STARTING: "being paused",
    S.PENDING: "being paused",
    S.QUEUED: "leaving the GPU queue",
}

_JUDGES = {
    UserAction.OPEN: _open,
    UserAction.RESUME: _resume,
    UserAction.PAUSE: _pause,
    UserAction.LEAVE_QUEUE: _leave_queue,
    UserAction.RESTART: _restart,
    UserAction.DELETE: _delete,
}
