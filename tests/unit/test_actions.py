"""Which actions each state allows, exhaustively over the whole (finite) input space."""

from __future__ import annotations

import itertools

import pytest

from aigc_gateway.domain.actions import (
    FRESH_LAUNCH_COMING,
    Outcome,
    UserAction,
    allowed_actions,
    api_action,
    effect,
    judge,
)
from aigc_gateway.domain.reconcile import Phase, Situation, Step, decide
from aigc_gateway.domain.states import HOLDS_PROCESS, DesiredState, InstanceState

S = InstanceState
D = DesiredState
A = UserAction
ALL = list(itertools.product(A, S, D, (False, True)))
CHANGING = (A.RESUME, A.PAUSE, A.LEAVE_QUEUE, A.RESTART)

# What a page offers in each state, for the desired state the controller is heading to when
# nobody just acted (the settled pairs) and for the moments right after an action.
OFFERED = {
    (S.PENDING, D.RUNNING): (A.OPEN, A.PAUSE, A.DELETE),
    (S.QUEUED, D.RUNNING): (A.LEAVE_QUEUE, A.DELETE),
    (S.STARTING, D.RUNNING): (A.OPEN, A.PAUSE, A.DELETE),
    (S.RUNNING, D.RUNNING): (A.OPEN, A.PAUSE, A.RESTART, A.DELETE),
    (S.STOPPING, D.RUNNING): (A.OPEN, A.PAUSE, A.DELETE),
    (S.STOPPING, D.PAUSED): (A.RESUME, A.DELETE),
    (S.PAUSED, D.PAUSED): (A.RESUME, A.DELETE),
    (S.PAUSED, D.RUNNING): (A.OPEN, A.PAUSE, A.DELETE),
    (S.FAILED, D.RUNNING): (A.RESTART, A.DELETE),
    (S.FAILED, D.PAUSED): (A.RESTART, A.DELETE),
    (S.RUNNING, D.PAUSED): (A.RESUME, A.DELETE),
    (S.QUEUED, D.PAUSED): (A.RESUME, A.DELETE),
    (S.DELETING, D.DELETED): (),
    (S.DELETED, D.DELETED): (),
    (S.RUNNING, D.DELETED): (),
}


def test_the_input_space_is_the_full_product() -> None:
    assert len(ALL) == len(A) * len(S) * len(D) * 2 == 324


@pytest.mark.parametrize(("state", "desired"), list(OFFERED))
def test_each_state_offers_what_it_allows(state: S, desired: D) -> None:
    assert allowed_actions(state=state, desired=desired) == OFFERED[(state, desired)]


def test_the_reported_symptoms() -> None:
    # A running card offered Pause and Resume; a queued one Open, Pause, Resume and Restart.
    running = allowed_actions(state=S.RUNNING, desired=D.RUNNING)
    assert A.PAUSE in running and A.RESUME not in running
    queued = allowed_actions(state=S.QUEUED, desired=D.RUNNING)
    assert not {A.OPEN, A.PAUSE, A.RESUME, A.RESTART} & set(queued)


def test_every_combination_has_a_verdict_and_refusals_say_why() -> None:
    for action, state, desired, pending in ALL:
        verdict = judge(action, state=state, desired=desired, restart_pending=pending)
        assert verdict.accepted == (verdict.outcome is not Outcome.REFUSE)
        assert bool(verdict.reason) == (verdict.outcome is Outcome.REFUSE), verdict


def test_offered_actions_are_applied_ones() -> None:
    for _, state, desired, pending in ALL:
        for action in allowed_actions(state=state, desired=desired, restart_pending=pending):
            verdict = judge(action, state=state, desired=desired, restart_pending=pending)
            assert verdict.outcome is Outcome.APPLY


def test_applied_actions_change_something_and_repeats_change_nothing() -> None:
    """An applied action changes what the instance is asked to do; a repeated pause, resume or
    leave-queue would change nothing (the idempotence the API promises). A restart is also a
    repeat while a fresh engine is on its way (a double click), and then nothing is applied."""
    for action, state, desired, pending in itertools.product(CHANGING, S, D, (False, True)):
        verdict = judge(action, state=state, desired=desired, restart_pending=pending)
        if not verdict.accepted:
            continue
        changed = effect(action, state=state, desired=desired, restart_pending=pending) != (
            desired,
            pending,
        )
        if verdict.outcome is Outcome.APPLY:
            assert changed, (action, state, desired, pending)
        elif action is A.RESTART:
            assert desired is D.RUNNING and (pending or state in FRESH_LAUNCH_COMING)
        else:
            assert not changed, (action, state, desired, pending)


def test_an_applied_action_on_a_settled_instance_sets_the_controller_to_work() -> None:
    settled = [(s, d) for (s, d) in OFFERED if d is not D.DELETED and _stable(s, d)]
    assert settled
    for state, desired in settled:
        phase = Phase.READY if state in HOLDS_PROCESS else Phase.ABSENT
        for action in allowed_actions(state=state, desired=desired):
            if action not in CHANGING:
                continue
            new, pending = effect(action, state=state, desired=desired, restart_pending=False)
            step = decide(Situation(desired=new, state=state, phase=phase, restart_pending=pending))
            assert step is not Step.NOTHING, (state, desired, action)


def _stable(state: S, desired: D) -> bool:
    phase = Phase.READY if state in HOLDS_PROCESS else Phase.ABSENT
    return decide(Situation(desired=desired, state=state, phase=phase)) is Step.NOTHING


def test_deleting_refuses_everything_but_a_repeated_delete() -> None:
    for action, state, pending in itertools.product(A, (S.DELETING, S.DELETED), (False, True)):
        verdict = judge(action, state=state, desired=D.DELETED, restart_pending=pending)
        expected = Outcome.REPEAT if action is A.DELETE else Outcome.REFUSE
        assert verdict.outcome is expected


def test_api_verbs() -> None:
    assert api_action("start", S.PAUSED) is A.RESUME
    assert api_action("pause", S.QUEUED) is A.LEAVE_QUEUE
    assert api_action("pause", S.RUNNING) is A.PAUSE
    assert api_action("restart", S.FAILED) is A.RESTART
    with pytest.raises(ValueError, match="does not change"):
        effect(A.OPEN, state=S.RUNNING, desired=D.RUNNING, restart_pending=False)
