"""The instance state machine: legal moves, errors for illegal ones, and graph properties."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from aigc_gateway.domain.states import (
    ALLOWED,
    HOLDS_PROCESS,
    STABLE,
    IllegalTransition,
    InstanceState,
    Transition,
    can_transition,
    transition,
)
from aigc_gateway.errors import Conflict, InternalError, UserError

S = InstanceState
ALL_PAIRS = list(itertools.product(S, S))


def reachable_from(start: InstanceState) -> set[InstanceState]:
    seen = {start}
    todo = deque([start])
    while todo:
        for nxt in ALLOWED[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_allowed_covers_every_state_and_only_states() -> None:
    assert set(ALLOWED) == set(S)
    for targets in ALLOWED.values():
        assert targets <= set(S)


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_transition_succeeds_iff_allowed(source: InstanceState, target: InstanceState) -> None:
    if target in ALLOWED[source]:
        assert can_transition(source, target)
        move = transition(source, target, "because")
        assert move == Transition(source, target, "because")
    else:
        assert not can_transition(source, target)
        with pytest.raises(IllegalTransition) as info:
            transition(source, target, "because")
        err = info.value
        # A bug in the caller, not the user's fault nor a concurrent change: loops back off
        # and log it with its traceback instead of retrying at once as for a Conflict.
        assert isinstance(err, InternalError)
        assert not isinstance(err, (Conflict, UserError))
        assert err.status == 500
        assert err.code == "illegal_transition"
        assert source.value in err.message
        assert target.value in err.message
        assert err.message.index(source.value) < err.message.rindex(target.value)


def test_no_state_moves_to_itself() -> None:
    for state in S:
        assert not can_transition(state, state)


def test_deleted_is_terminal() -> None:
    assert ALLOWED[S.DELETED] == frozenset()
    for target in S:
        with pytest.raises(IllegalTransition):
            transition(S.DELETED, target, "resurrect")


def test_only_deleting_leads_to_deleted() -> None:
    sources = {s for s in S if S.DELETED in ALLOWED[s]}
    assert sources == {S.DELETING}


def test_every_state_reachable_from_pending() -> None:
    assert reachable_from(S.PENDING) == set(S)


@pytest.mark.parametrize("state", [s for s in S if s is not S.DELETED], ids=lambda s: s.value)
def test_deleted_reachable_from_every_live_state(state: InstanceState) -> None:
    assert S.DELETED in reachable_from(state)


def test_typical_lifecycle_path() -> None:
    path = [
        S.PENDING,
        S.STARTING,
        S.RUNNING,
        S.STOPPING,
        S.PAUSED,
        S.STARTING,
        S.RUNNING,
        S.FAILED,
        S.STARTING,
        S.FAILED,
        S.STOPPING,
        S.PAUSED,
        S.DELETING,
        S.DELETED,
    ]
    moves = [transition(a, b, f"{a}->{b}") for a, b in itertools.pairwise(path)]
    assert [m.target for m in moves] == path[1:]
    assert [m.source for m in moves] == path[:-1]
    assert moves[0].reason == "pending->starting"


def test_transition_is_frozen() -> None:
    move = transition(S.PENDING, S.STARTING, "go")
    with pytest.raises(AttributeError):
        move.target = S.RUNNING  # type: ignore[misc]


def test_stable_and_process_sets() -> None:
    assert {S.QUEUED, S.RUNNING, S.PAUSED, S.FAILED, S.DELETED} == STABLE
    assert {S.STARTING, S.RUNNING, S.STOPPING} == HOLDS_PROCESS
    # A state that may hold a process can always be stopped or fail.
    for state in HOLDS_PROCESS:
        assert ALLOWED[state] & {S.STOPPING, S.PAUSED, S.FAILED}


def test_state_values_are_the_stored_strings() -> None:
    assert [s.value for s in S] == [
        "pending",
        "queued",
        "starting",
        "running",
        "stopping",
        "paused",
        "failed",
        "deleting",
        "deleted",
    ]
    assert S("paused") is S.PAUSED
