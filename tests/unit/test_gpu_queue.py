"""The GPU wait queue and the broker, under a fake clock: order, priorities, cancel, automatic
start on release, wait estimates from the release history, and a rebuild from the store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_gateway.gpu import Gpu, Inventory, Placement, ReleaseHistory, Request, WaitQueue
from aigc_gateway.gpu.broker import GpuBroker, Held, Queued


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def gpu(gid: str, gpu_type: str = "rtx4090", memory: float = 24, host: str = "h1") -> Gpu:
    return Gpu(gid, host, 0, gpu_type, memory, "onprem", 1, 0.9)


def whole(iid: str, *types: str) -> Request:
    return Request(iid, 1, None, types=types)


def share(iid: str, gib: float) -> Request:
    return Request(iid, 0, gib)


def broker(*gpus: Gpu, clock: Clock | None = None) -> GpuBroker:
    return GpuBroker(gpus, "test", clock=clock or Clock())


# -- the queue alone ------------------------------------------------------------------------------


def test_fifo_within_a_priority_and_higher_priorities_first() -> None:
    q = WaitQueue()
    q.add(whole("a"), priority=0, at=10)
    q.add(whole("b"), priority=0, at=11)
    q.add(whole("c"), priority=5, at=12)
    q.add(whole("d"), priority=0, at=11)  # same second as b: arrival order breaks the tie
    assert [w.instance_id for w in q.ordered()] == ["c", "a", "b", "d"]
    assert q.position("b") == 3 and q.position("zzz") is None
    # Adding again keeps the place (a retried launch must not lose it).
    q.add(whole("a"), priority=9, at=99)
    assert q.position("a") == 2


def test_cancel_moves_the_others_up() -> None:
    q = WaitQueue()
    for n, iid in enumerate("abc"):
        q.add(whole(iid), priority=0, at=n)
    assert q.remove("a") and not q.remove("a")
    assert [q.position(i) for i in "bc"] == [1, 2]


def test_admission_keeps_what_an_earlier_waiter_needs_and_backfills_the_rest() -> None:
    inv = Inventory([gpu("g1"), gpu("g2", "a100", 80)])
    inv.allocate(Placement("holder", ("g1",), None, ""))
    q = WaitQueue()
    q.add(whole("big", "rtx4090"), priority=0, at=1)  # needs the busy rtx4090: waits
    q.add(whole("also-rtx", "rtx4090"), priority=0, at=2)  # behind big for the same card
    q.add(share("small", 4), priority=0, at=3)  # any type: may use the a100 nobody earlier wants
    q.add(whole("a100-only", "a100"), priority=0, at=4)  # the a100 now holds a share: waits
    admission = q.admit(inv)
    assert [p.instance_id for p in admission.placed] == ["small"]
    assert inv.allocation("small") == Placement("small", ("g2",), 4, "").allocation
    assert [w.instance_id for w in q.ordered()] == ["big", "also-rtx", "a100-only"]
    inv.release("holder")
    assert [p.instance_id for p in q.admit(inv).placed] == ["big"]  # first come, first served


def test_a_later_share_never_takes_the_card_an_earlier_waiter_accepts() -> None:
    inv = Inventory([gpu("g1"), gpu("g2", "a100", 80)])
    inv.allocate(Placement("s1", ("g1",), 20, ""))  # g1 has 4 GiB left
    q = WaitQueue()
    q.add(share("big-share", 8), priority=0, at=1)  # fits the a100 (any type accepted)
    q.add(Request("rtx-share", 0, 2, types=("rtx4090",)), priority=0, at=2)
    placed = q.admit(inv).placed
    assert [p.instance_id for p in placed] == ["big-share", "rtx-share"]
    assert placed[0].gpu_ids == ("g2",) and placed[1].gpu_ids == ("g1",)
    inv2 = Inventory([gpu("g1")])
    inv2.allocate(Placement("s1", ("g1",), 20, ""))
    q2 = WaitQueue()
    q2.add(share("needs-8", 8), priority=0, at=1)  # does not fit g1's 4 GiB: waits
    q2.add(share("needs-2", 2), priority=0, at=2)  # would fit, but only on the card needs-8 wants
    assert q2.admit(inv2).placed == []


def test_entries_that_can_never_fit_any_more_are_handed_back() -> None:
    inv = Inventory([gpu("g1")])
    q = WaitQueue()
    q.add(whole("x", "h100"), priority=0, at=1)
    assert [u.instance_id for u in q.admit(inv).never] == ["x"] and len(q) == 0


def test_estimates_come_from_the_release_history() -> None:
    history = ReleaseHistory()
    assert history.estimate_wait_s(1, [0.0], now=100.0) is None  # no history: no number
    history.extend([600.0, 1200.0])  # mean hold 900 s
    # Two holders started at t=0 and t=500; now is t=600.
    assert history.estimate_wait_s(1, [0.0, 500.0], now=600.0) == 300.0
    assert history.estimate_wait_s(2, [0.0, 500.0], now=600.0) == 800.0
    # A third waiter needs a second round: the first card again, one mean later.
    assert history.estimate_wait_s(3, [0.0, 500.0], now=600.0) == 1200.0
    # A holder already past the mean is expected soon, never in the past.
    assert history.estimate_wait_s(1, [0.0], now=5000.0) == 90.0


# -- the broker ---------------------------------------------------------------------------------


def test_a_request_waits_then_starts_automatically_on_release() -> None:
    clock = Clock()
    b = broker(gpu("g1"), clock=clock)
    first = b.acquire(whole("a"))
    assert isinstance(first, Placement) and first.gpu_ids == ("g1",)
    waiting = b.acquire(whole("b"))
    assert not isinstance(waiting, Placement) and waiting.kind == "not_now"
    assert "position 1 of 1" in waiting.reason and "unknown yet" in waiting.reason
    # Asking again changes nothing: same place, still waiting.
    assert not isinstance(b.acquire(whole("b")), Placement)
    clock.advance(600)
    assert b.release("a") and not b.release("a")
    admitted = b.admit()
    assert [p.instance_id for p in admitted.placed] == ["b"]
    # The launch that follows finds its GPUs already held for it.
    again = b.acquire(whole("b"))
    assert isinstance(again, Placement) and again.gpu_ids == ("g1",)
    assert len(b.queue) == 0
    # The release history now gives waiters an estimate.
    b.acquire(whole("c"))
    info = b.queue_info("c")
    assert info is not None and info.estimate_s == 600.0


def test_another_process_s_earlier_waiter_keeps_its_turn() -> None:
    """Waiters another gateway process drives are in this queue too, in their place: a card
    freed here is left for the earlier of them (named in ``elsewhere``), never started here,
    and nobody here behind it takes it; once it has left the store's queue, the next is ours."""
    clock = Clock()
    b = broker(gpu("g1"), gpu("g2", "a100", 80), clock=clock)
    assert isinstance(b.acquire(whole("holder", "rtx4090")), Placement)
    b.sync_queue([Queued(whole("theirs", "rtx4090"), 0, clock.now - 5)])
    ours = b.acquire(whole("ours", "rtx4090"))
    assert not isinstance(ours, Placement) and b.queue.position("ours") == 2
    assert b.release("holder")
    admitted = b.admit()
    assert admitted.placed == [] and admitted.elsewhere == ["theirs"]
    assert b.queue.position("theirs") == 1  # still waiting here, in its place
    assert b.inventory.allocation("theirs") is None and b.inventory.allocation("ours") is None
    # A newcomer for any card still backfills the one nobody ahead of it accepts.
    assert isinstance(b.acquire(whole("any-a100", "a100")), Placement)
    # Their process started it (the store says so): it leaves this queue; our turn.
    b.sync_held([Held("theirs", ("g1",), None, clock.now, "")])
    b.sync_queue([])
    b.sync_held([])  # and released it again
    assert [p.instance_id for p in b.admit().placed] == ["ours"]


def test_a_waiter_taken_over_by_another_process_is_handed_over() -> None:
    """An instance admitted here (a reservation not yet recorded) whose lease another process
    took: the sync gives its cards up and keeps it in the queue as theirs."""
    b = broker(gpu("g1"))
    assert isinstance(b.acquire(whole("a")), Placement)
    assert not isinstance(b.acquire(whole("b")), Placement)
    b.release("a")
    assert [p.instance_id for p in b.admit().placed] == ["b"]
    b.sync_queue([Queued(whole("b"), 0, 1.0)])
    assert b.inventory.allocation("b") is None and b.waits_elsewhere("b")
    assert b.admit().elsewhere == ["b"]


def test_a_newcomer_does_not_jump_a_waiting_competitor_but_may_backfill() -> None:
    b = broker(gpu("g1"), gpu("g2", "a100", 80))
    assert isinstance(b.acquire(whole("holder", "rtx4090")), Placement)
    assert not isinstance(b.acquire(whole("waiter", "rtx4090")), Placement)
    # Another rtx4090 request queues behind the waiter.
    assert not isinstance(b.acquire(whole("late-rtx", "rtx4090")), Placement)
    info = b.queue_info("late-rtx")
    assert info is not None and info.position == 2
    # A share of any type goes to the a100, which no waiter accepts: it delays nobody.
    late = b.acquire(share("late-share", 4))
    assert isinstance(late, Placement) and late.gpu_ids == ("g2",)
    # A higher priority newcomer is not held back by lower priority waiters.
    b.release("holder")  # (no admission run yet: the card is free, the waiter still waits)
    urgent = b.acquire(whole("urgent", "rtx4090"), priority=5)
    assert isinstance(urgent, Placement) and urgent.gpu_ids == ("g1",)


def test_cancel_leaves_the_queue_and_never_holds_gpus() -> None:
    b = broker(gpu("g1"))
    b.acquire(whole("a"))
    b.acquire(whole("b"))
    assert b.leave_queue("b") and b.queue_info("b") is None
    b.release("a")
    assert b.admit().placed == []
    assert b.inventory.allocations == ()


def test_requests_that_could_never_fit_are_refused_not_queued() -> None:
    b = broker(gpu("g1"))
    refused = b.acquire(whole("x", "h100"))
    assert not isinstance(refused, Placement) and refused.never and len(b.queue) == 0
    empty = broker()
    no_gpu = empty.acquire(whole("y"))
    assert not isinstance(no_gpu, Placement) and "no GPU" in no_gpu.reason


def test_cordon_keeps_holders_and_turns_new_requests_into_waiters() -> None:
    b = broker(gpu("g1"), gpu("g2"))
    assert isinstance(b.acquire(whole("a")), Placement)
    b.set_cordon("g2", "cordon")
    assert b.inventory.allocation("a") is not None  # allocations survive a cordon
    w = b.acquire(whole("b"))
    assert not isinstance(w, Placement) and w.kind == "not_now"  # not "never": g2 comes back
    b.set_cordon("g2", None)
    assert [p.gpu_ids for p in b.admit().placed] == [("g2",)]


def test_restore_rebuilds_allocations_and_the_queue_order() -> None:
    clock = Clock(5_000)
    b = broker(gpu("g1"), gpu("g2"), clock=clock)
    dropped = b.restore(
        held=[
            Held("a", ("g1",), None, 4_000, "placed on g1"),
            Held("gone", ("g9",), None, 4_000, "on a card since removed"),
        ],
        queued=[Queued(whole("late"), 0, 4_900), Queued(whole("early"), 0, 4_500)],
        cordons={"g2": "cordon", "unknown-card": "drain"},
    )
    assert dropped == ["gone"]
    assert b.inventory.state("g1").whole_owner == "a" and b.explanation("a") == "placed on g1"
    assert [w.instance_id for w in b.queue.ordered()] == ["early", "late"]
    assert b.cordon_mode("g2") == "cordon" and b.cordon_mode("unknown-card") is None
    b.set_cordon("g2", None)
    assert [p.instance_id for p in b.admit().placed] == ["early"]


def test_grants_name_cards_by_uuid_and_carry_the_share_limit() -> None:
    b = broker(
        Gpu("GPU-1234", "h1", 3, "h100", 80, "p", 1, 1.0),
        Gpu("local-7", "h1", 7, "h100", 80, "p", 1, 1.0),
    )
    whole_two = b.acquire(Request("w", 2, None))
    assert isinstance(whole_two, Placement)
    assert b.grant(whole_two).devices == ("GPU-1234", "7")
    b.release("w")
    part = b.acquire(share("s", 12.5))
    assert isinstance(part, Placement)
    grant = b.grant(part)
    assert grant.memory_mib == 12800 and grant.is_share


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["acquire", "release", "cancel"]), st.integers(0, 7)),
        min_size=1,
        max_size=60,
    )
)
def test_any_sequence_keeps_fifo_and_never_leaves_a_fitting_head_waiting(
    ops: list[tuple[str, int]],
) -> None:
    """Whatever happens, after each admission the head of the queue does not fit, waiting
    entries hold no GPUs, and starts among equal-priority competitors follow arrival order."""
    clock = Clock()
    b = broker(gpu("g1"), gpu("g2"))
    arrival: dict[str, int] = {}
    """The arrival number of each instance's current request."""
    started: list[int] = []
    """Arrival numbers of the requests that started, in the order they started."""
    for n, (op, k) in enumerate(ops):
        clock.advance(1)
        iid = f"i{k}"
        if op == "acquire" and b.inventory.allocation(iid) is None and iid not in b.queue:
            arrival[iid] = n
            if isinstance(b.acquire(whole(iid)), Placement):
                started.append(n)
        elif op == "release":
            b.release(iid)
        else:
            b.leave_queue(iid)
        started.extend(arrival[p.instance_id] for p in b.admit().placed)
        b.inventory.verify()
        for w in b.queue.ordered():
            assert b.inventory.allocation(w.instance_id) is None
        head = b.queue.ordered()[:1]
        if head:
            free = [g for g in ("g1", "g2") if b.inventory.state(g).whole_owner is None]
            assert free == [], "a waiter could have started"
    # Every competitor is equal here, so starts follow arrival order exactly.
    assert started == sorted(started)
