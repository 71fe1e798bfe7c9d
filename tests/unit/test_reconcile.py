"""The reconcile decision, exhaustively over its whole (finite) input space, plus a simulation of
the controller that checks every situation converges to what the user asked for."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_gateway.domain.reconcile import Phase, Situation, Step, decide
from aigc_gateway.domain.states import (
    STABLE,
    DesiredState,
    InstanceState,
    can_transition,
    transition,
)

S = InstanceState
D = DesiredState
P = Phase

ALL_SITUATIONS = [
    Situation(desired=d, state=s, phase=p, restart_pending=r, spawned=n)
    for d, s, p, r, n in itertools.product(D, S, P, (False, True), (True, False))
]


def test_input_space_is_the_full_product() -> None:
    assert len(ALL_SITUATIONS) == len(D) * len(S) * len(P) * 2 * 2 == 432
    assert len(set(ALL_SITUATIONS)) == 432


def unspawned_start(s: Situation) -> bool:
    """Recorded as starting, but the runtime never took the engine (see Situation.spawned)."""
    return s.state is S.STARTING and s.phase is P.ABSENT and not s.spawned


def test_phase_alive() -> None:
    assert {p for p in P if p.alive} == {P.STARTING, P.READY}


# -- (a) total and deterministic ---------------------------------------------------------------


def test_decide_never_raises_and_is_deterministic() -> None:
    for s in ALL_SITUATIONS:
        step = decide(s)
        assert isinstance(step, Step)
        assert decide(s) is step


def test_every_step_is_used_somewhere() -> None:
    # Guards the exhaustive checks below against a decide() that collapsed to a few answers.
    assert {decide(s) for s in ALL_SITUATIONS} == set(Step)


# -- (b) every step implies a legal move -------------------------------------------------------


def _illegal_reason(s: Situation, step: Step) -> str | None:
    st_, ph = s.state, s.phase
    if step is Step.LAUNCH and not (can_transition(st_, S.STARTING) or unspawned_start(s)):
        return "LAUNCH from a state that cannot go to starting"
    if step is Step.MARK_RUNNING and st_ is not S.STARTING:
        return "MARK_RUNNING outside starting"
    if step is Step.MARK_PAUSED and st_ not in (S.STOPPING, S.PENDING, S.QUEUED):
        return "MARK_PAUSED outside stopping/pending/queued"
    if step is Step.MARK_FAILED and st_ not in (S.STARTING, S.RUNNING):
        return "MARK_FAILED outside starting/running"
    if step is Step.AWAIT_READY and not (st_ is S.STARTING and ph.alive):
        return "AWAIT_READY without a starting, live engine"
    if step is Step.STOP and not (ph.alive or st_ in (S.STARTING, S.RUNNING)):
        return "STOP with no process and no process-holding state"
    if step is Step.DELETE and (ph.alive or st_ is S.DELETED):
        return "DELETE with a live process or an already deleted instance"
    return None


def test_every_step_implies_a_legal_move() -> None:
    bad = []
    for s in ALL_SITUATIONS:
        step = decide(s)
        why = _illegal_reason(s, step)
        if why:
            bad.append((s, step, why))
    assert bad == []


def test_moves_the_controller_records_are_legal_transitions() -> None:
    # The same check through transition() itself, as the controller performs it.
    for s in ALL_SITUATIONS:
        step = decide(s)
        target = {
            Step.LAUNCH: S.STARTING,
            Step.MARK_RUNNING: S.RUNNING,
            Step.MARK_PAUSED: S.PAUSED,
            Step.MARK_FAILED: S.FAILED,
        }.get(step)
        if step is Step.LAUNCH and unspawned_start(s):
            continue  # already starting: only the runtime is asked
        if target is not None:
            transition(s.state, target, str(step))  # raises if illegal


def test_nothing_only_in_stable_states() -> None:
    for s in ALL_SITUATIONS:
        if decide(s) is Step.NOTHING:
            assert s.state in STABLE, s


def test_deleted_instance_never_acts() -> None:
    for s in ALL_SITUATIONS:
        if s.state is S.DELETED:
            assert decide(s) is Step.NOTHING, s


# -- (c) deletion ------------------------------------------------------------------------------


def test_desired_deleted_stops_a_live_process_else_deletes() -> None:
    for s in ALL_SITUATIONS:
        if s.desired is not D.DELETED or s.state is S.DELETED:
            continue
        expected = Step.STOP if s.phase.alive else Step.DELETE
        assert decide(s) is expected, s


def test_deleting_is_not_undone_by_a_new_desired_state() -> None:
    for s in ALL_SITUATIONS:
        if s.state is S.DELETING:
            assert decide(s) is (Step.STOP if s.phase.alive else Step.DELETE), s


def test_launch_never_while_deletion_is_wanted() -> None:
    for s in ALL_SITUATIONS:
        if s.desired is D.DELETED or s.state in (S.DELETING, S.DELETED):
            assert decide(s) not in (Step.LAUNCH, Step.AWAIT_READY, Step.MARK_RUNNING), s


def test_desired_paused_never_launches() -> None:
    for s in ALL_SITUATIONS:
        if s.desired is D.PAUSED:
            assert decide(s) not in (Step.LAUNCH, Step.MARK_RUNNING, Step.AWAIT_READY), s


# -- (d) key behaviours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "state", "phase", "restart", "expected"),
    [
        # A gateway restart re-adopts an engine that kept running: nothing to do.
        (D.RUNNING, S.RUNNING, P.READY, False, Step.NOTHING),
        (D.RUNNING, S.RUNNING, P.STARTING, False, Step.NOTHING),
        # The engine died while it should run.
        (D.RUNNING, S.RUNNING, P.EXITED, False, Step.MARK_FAILED),
        (D.RUNNING, S.RUNNING, P.ABSENT, False, Step.MARK_FAILED),
        (D.RUNNING, S.STARTING, P.EXITED, False, Step.MARK_FAILED),
        (D.RUNNING, S.STARTING, P.ABSENT, False, Step.MARK_FAILED),
        # Starting up.
        (D.RUNNING, S.STARTING, P.STARTING, False, Step.AWAIT_READY),
        (D.RUNNING, S.STARTING, P.READY, False, Step.MARK_RUNNING),
        (D.RUNNING, S.PENDING, P.ABSENT, False, Step.LAUNCH),
        (D.RUNNING, S.PAUSED, P.ABSENT, False, Step.LAUNCH),
        (D.RUNNING, S.PAUSED, P.EXITED, False, Step.LAUNCH),
        # Queued: each pass asks for GPUs again; leaving the queue is a pause.
        (D.RUNNING, S.QUEUED, P.ABSENT, False, Step.LAUNCH),
        (D.PAUSED, S.QUEUED, P.ABSENT, False, Step.MARK_PAUSED),
        (D.DELETED, S.QUEUED, P.ABSENT, False, Step.DELETE),
        # A failed engine stays failed until the user asks for a restart.
        (D.RUNNING, S.FAILED, P.ABSENT, False, Step.NOTHING),
        (D.RUNNING, S.FAILED, P.EXITED, False, Step.NOTHING),
        (D.RUNNING, S.FAILED, P.ABSENT, True, Step.LAUNCH),
        (D.RUNNING, S.FAILED, P.EXITED, True, Step.LAUNCH),
        # A process that outlived its failure is cleared away.
        (D.RUNNING, S.FAILED, P.STARTING, False, Step.STOP),
        (D.RUNNING, S.FAILED, P.READY, False, Step.STOP),
        # Restart: stop first.
        (D.RUNNING, S.RUNNING, P.READY, True, Step.STOP),
        (D.RUNNING, S.FAILED, P.READY, True, Step.STOP),
        # A stop that finished while the user asked to run again: record the pause first.
        (D.RUNNING, S.STOPPING, P.ABSENT, False, Step.MARK_PAUSED),
        (D.RUNNING, S.STOPPING, P.READY, False, Step.STOP),
        # Pausing.
        (D.PAUSED, S.RUNNING, P.READY, False, Step.STOP),
        (D.PAUSED, S.STARTING, P.STARTING, False, Step.STOP),
        (D.PAUSED, S.RUNNING, P.EXITED, False, Step.STOP),
        (D.PAUSED, S.STOPPING, P.ABSENT, False, Step.MARK_PAUSED),
        (D.PAUSED, S.PENDING, P.ABSENT, False, Step.MARK_PAUSED),
        (D.PAUSED, S.PAUSED, P.ABSENT, False, Step.NOTHING),
        (D.PAUSED, S.PAUSED, P.READY, False, Step.STOP),
        (D.PAUSED, S.FAILED, P.ABSENT, False, Step.NOTHING),
        (D.PAUSED, S.FAILED, P.ABSENT, True, Step.NOTHING),
        # Deleting.
        (D.DELETED, S.RUNNING, P.READY, False, Step.STOP),
        (D.DELETED, S.RUNNING, P.ABSENT, False, Step.DELETE),
        (D.DELETED, S.PAUSED, P.ABSENT, False, Step.DELETE),
        (D.DELETED, S.DELETED, P.ABSENT, False, Step.NOTHING),
        (D.RUNNING, S.DELETING, P.ABSENT, False, Step.DELETE),
        (D.RUNNING, S.DELETED, P.READY, True, Step.NOTHING),
    ],
)
def test_key_behaviours(
    desired: DesiredState, state: InstanceState, phase: Phase, restart: bool, expected: Step
) -> None:
    assert decide(Situation(desired, state, phase, restart)) is expected


@pytest.mark.parametrize(
    ("desired", "phase", "expected"),
    [
        # The gateway died between recording "starting" and the runtime's start, or the
        # runtime said "not now": the start is made (again), not taken for a crash.
        (D.RUNNING, P.ABSENT, Step.LAUNCH),
        # The runtime had it and it ended: that is a crash.
        (D.RUNNING, P.EXITED, Step.MARK_FAILED),
        (D.RUNNING, P.STARTING, Step.AWAIT_READY),
        (D.PAUSED, P.ABSENT, Step.STOP),
        (D.DELETED, P.ABSENT, Step.DELETE),
    ],
)
def test_a_recorded_start_the_runtime_never_took(
    desired: DesiredState, phase: Phase, expected: Step
) -> None:
    assert decide(Situation(desired, S.STARTING, phase, spawned=False)) is expected


def test_restart_pending_defaults_to_false() -> None:
    assert Situation(D.RUNNING, S.FAILED, P.ABSENT).restart_pending is False
    assert decide(Situation(D.RUNNING, S.FAILED, P.ABSENT)) is Step.NOTHING


# -- (e) simulation ----------------------------------------------------------------------------


@dataclass
class World:
    """A fake store + runtime, changed by each step as the controller would change them."""

    desired: DesiredState
    state: InstanceState
    phase: Phase
    restart_pending: bool = False
    spawned: bool = True
    history: list[Step] = field(default_factory=list)

    def situation(self) -> Situation:
        return Situation(
            self.desired, self.state, self.phase, self.restart_pending, spawned=self.spawned
        )

    def move(self, target: InstanceState) -> None:
        self.state = transition(self.state, target, "simulated").target  # raises if illegal

    def apply(self, step: Step, outcome: str = "ok") -> None:
        """Perform ``step``; ``outcome`` picks a non-happy result where the real one may vary."""
        self.history.append(step)
        if step is Step.LAUNCH:
            if not unspawned_start(self.situation()):
                self.move(S.STARTING)
                self.restart_pending = False
            self.spawned = True
            if outcome == "launch_error":  # LaunchError, or "not installed on this host"
                self.move(S.FAILED)
                self.phase = P.ABSENT
            else:
                self.phase = P.STARTING
        elif step is Step.AWAIT_READY:
            if outcome == "exit":
                self.phase = P.EXITED
            elif outcome == "timeout":  # the controller stops the engine and marks it failed
                self.phase = P.ABSENT
                self.move(S.FAILED)
            else:
                self.phase = P.READY
        elif step is Step.MARK_RUNNING:
            self.move(S.RUNNING)
        elif step is Step.STOP:
            if self.state is not S.STOPPING and can_transition(self.state, S.STOPPING):
                self.move(S.STOPPING)
            self.phase = P.ABSENT
        elif step is Step.MARK_PAUSED:
            self.move(S.PAUSED)
        elif step is Step.MARK_FAILED:
            self.move(S.FAILED)
        elif step is Step.DELETE:
            # The controller's path to deleted, through legal moves only.
            if self.state in (S.STARTING, S.RUNNING):
                self.move(S.STOPPING)
            if self.state is S.STOPPING:
                self.move(S.PAUSED)
            if self.state is not S.DELETING:
                self.move(S.DELETING)
            self.move(S.DELETED)
        else:  # pragma: no cover - NOTHING is never applied
            raise AssertionError(step)


MAX_STEPS = 10


def converge(world: World, outcomes: list[str] | None = None) -> World:
    """Apply decide() until NOTHING; fail if that takes more than MAX_STEPS steps."""
    outcomes = list(outcomes or [])
    for _ in range(MAX_STEPS):
        step = decide(world.situation())
        if step is Step.NOTHING:
            return world
        world.apply(step, outcomes.pop(0) if outcomes else "ok")
    raise AssertionError(f"no convergence in {MAX_STEPS} steps: {world}")


def assert_final(world: World, deletion_started: bool, started_deleted: bool = False) -> None:
    """The end state matches what the user asked for.

    ``started_deleted``: the instance was already deleted at the start. decide() never acts on a
    deleted instance (the controller does not even observe it); a process still running for one
    is an orphan, stopped by the controller's resync sweep, so it may stay alive here.
    """
    if deletion_started:
        # Deleted is terminal, and a deletion in progress is never undone (a user cannot get a
        # half-deleted instance back), whatever the desired state says now.
        assert world.state is S.DELETED
    elif world.desired is D.DELETED:
        assert world.state is S.DELETED
    elif world.desired is D.RUNNING:
        # A failure is not retried on its own: the user must ask for a restart.
        assert world.state in (S.RUNNING, S.FAILED)
        if world.state is S.RUNNING:
            # READY, or STARTING for an adopted engine the runtime has not probed yet.
            assert world.phase.alive
    else:
        # Pausing a failed instance with no process changes nothing: it stays failed.
        assert world.state in (S.PAUSED, S.FAILED)
    if world.state is not S.RUNNING and not started_deleted:
        assert not world.phase.alive, "an engine process outlived its instance's stop"


@pytest.mark.parametrize("start", ALL_SITUATIONS, ids=str)
def test_every_situation_converges_with_happy_outcomes(start: Situation) -> None:
    world = converge(world_at(start))
    assert_final(
        world,
        deletion_started=start.state in (S.DELETING, S.DELETED),
        started_deleted=start.state is S.DELETED,
    )
    if start.state in (S.DELETING, S.DELETED) or start.desired is D.DELETED:
        return
    # With every launch succeeding, "failed" at the end needs a failure that was already there:
    if start.desired is D.RUNNING:
        # an engine that is gone while it should run (recorded, or noticed now), and no restart
        # was asked for.
        expect_failed = (
            not start.restart_pending
            and not start.phase.alive
            and start.state in (S.FAILED, S.STARTING, S.RUNNING)
            and not unspawned_start(start)
        )
        assert world.state is (S.FAILED if expect_failed else S.RUNNING), world
    else:
        # a failed instance with no process: pausing it changes nothing.
        expect_failed = start.state is S.FAILED and not start.phase.alive
        assert world.state is (S.FAILED if expect_failed else S.PAUSED), world


def world_at(start: Situation) -> World:
    return World(
        start.desired, start.state, start.phase, start.restart_pending, spawned=start.spawned
    )


def test_restart_of_a_running_engine_goes_through_a_stop() -> None:
    world = converge(World(D.RUNNING, S.RUNNING, P.READY, restart_pending=True))
    assert world.history == [
        Step.STOP,
        Step.MARK_PAUSED,
        Step.LAUNCH,
        Step.AWAIT_READY,
        Step.MARK_RUNNING,
    ]
    assert (world.state, world.phase, world.restart_pending) == (S.RUNNING, P.READY, False)


def test_fresh_instance_starts() -> None:
    world = converge(World(D.RUNNING, S.PENDING, P.ABSENT))
    assert world.history == [Step.LAUNCH, Step.AWAIT_READY, Step.MARK_RUNNING]
    assert world.state is S.RUNNING


def test_engine_crash_during_start_is_recorded_and_not_retried() -> None:
    world = converge(World(D.RUNNING, S.PENDING, P.ABSENT), outcomes=["ok", "exit"])
    assert world.history == [Step.LAUNCH, Step.AWAIT_READY, Step.MARK_FAILED]
    assert world.state is S.FAILED
    assert world.phase is P.EXITED


def test_delete_of_a_running_engine_stops_it_first() -> None:
    world = converge(World(D.DELETED, S.RUNNING, P.READY))
    assert world.history == [Step.STOP, Step.DELETE]
    assert world.state is S.DELETED


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "exit", "timeout", "launch_error"])
SITUATIONS = st.builds(
    Situation,
    desired=st.sampled_from(D),
    state=st.sampled_from(S),
    phase=st.sampled_from(P),
    restart_pending=st.booleans(),
    spawned=st.booleans(),
)


@settings(max_examples=300, deadline=None, database=None)
@given(start=SITUATIONS, outcomes=st.lists(OUTCOMES, max_size=MAX_STEPS))
def test_simulation_converges_whatever_the_outcomes(start: Situation, outcomes: list[str]) -> None:
    """Launches may fail, engines may crash or time out: still NOTHING within 10 legal steps."""
    world = converge(world_at(start), outcomes)
    assert_final(
        world,
        deletion_started=start.state in (S.DELETING, S.DELETED),
        started_deleted=start.state is S.DELETED,
    )


EVENTS = st.one_of(
    st.tuples(st.just("step"), OUTCOMES),
    st.tuples(st.just("desire"), st.sampled_from(D)),
    st.tuples(st.just("restart"), st.just("")),
    st.tuples(st.just("crash"), st.sampled_from([P.EXITED, P.ABSENT])),
)


@settings(max_examples=300, deadline=None, database=None)
@given(start=SITUATIONS, events=st.lists(EVENTS, max_size=25))
def test_simulation_converges_after_any_interleaving_of_user_and_engine_events(
    start: Situation, events: list[tuple[str, object]]
) -> None:
    """Users change their mind and engines crash between steps; every move stays legal, and once
    things calm down the instance settles within 10 steps in a state that matches the wish."""
    world = world_at(start)
    was_deleting = start.state in (S.DELETING, S.DELETED)
    for kind, arg in events:
        if kind == "step":
            step = decide(world.situation())
            if step is not Step.NOTHING:
                world.apply(step, str(arg))
        elif kind == "desire":
            assert isinstance(arg, DesiredState)
            world.desired = arg
        elif kind == "restart":
            world.restart_pending = True
        elif world.phase.alive:
            assert isinstance(arg, Phase)
            world.phase = arg
        was_deleting = was_deleting or world.state in (S.DELETING, S.DELETED)
    world = converge(world)
    assert_final(world, deletion_started=was_deleting, started_deleted=start.state is S.DELETED)
