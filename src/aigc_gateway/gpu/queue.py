"""The GPU wait queue and its wait estimates (pure: times are given, never read from a clock).

Order: higher ``priority`` first, then first in, first out. Admission walks the queue in that
order and places each request that fits now. A request that does not fit *reserves* the GPU types
it accepts: no later request may take a card of those types, so a stream of small requests can
never starve a big one that came first. A later request may still start on cards of other types
that no earlier waiter would accept (backfill), since that delays nobody ahead of it.

The wait estimate comes from the release history: the mean time recent allocations were held
gives each current holder an expected release time; the request at position *k* is expected to
start at the *k*-th of those releases (one release is assumed to admit one waiter). With no
history yet there is no estimate (``None``), which the dashboard shows as "unknown" rather than
inventing a number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from aigc_gateway.gpu.placement import Inventory, Placement, Request, Unplaceable, place


@dataclass(frozen=True, slots=True)
class Waiting:
    request: Request
    priority: int
    enqueued_at: float
    """Seconds (any epoch the caller keeps consistent, e.g. Unix time)."""
    seq: int
    """Tie-breaker that keeps first-in-first-out among equal times."""

    @property
    def instance_id(self) -> str:
        return self.request.instance_id

    def sort_key(self) -> tuple[int, float, int]:
        return (-self.priority, self.enqueued_at, self.seq)


def competes(a: Request, b: Request) -> bool:
    """Whether two requests could want the same cards (an empty type list accepts any)."""
    return not a.types or not b.types or bool(set(a.types) & set(b.types))


@dataclass(frozen=True, slots=True)
class Admission:
    placed: list[Placement]
    never: list[Unplaceable]
    """Entries that can no longer fit anywhere (cards were removed or cordoned): the caller
    fails them with the reason instead of letting them wait forever."""
    elsewhere: list[str] = field(default_factory=list)
    """Instances another gateway process drives whose turn it is: the cards that fit them were
    left free; their process starts them."""


class WaitQueue:
    def __init__(self) -> None:
        self._entries: dict[str, Waiting] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._entries

    def add(self, request: Request, *, priority: int, at: float) -> Waiting:
        """Enqueue (idempotent: an instance already waiting keeps its place)."""
        found = self._entries.get(request.instance_id)
        if found is not None:
            return found
        self._seq += 1
        entry = Waiting(request, priority, at, self._seq)
        self._entries[request.instance_id] = entry
        return entry

    def remove(self, instance_id: str) -> bool:
        return self._entries.pop(instance_id, None) is not None

    def ordered(self) -> list[Waiting]:
        return sorted(self._entries.values(), key=Waiting.sort_key)

    def position(self, instance_id: str) -> int | None:
        """1-based place in the queue order, or None when not waiting."""
        for n, entry in enumerate(self.ordered(), start=1):
            if entry.instance_id == instance_id:
                return n
        return None

    def ahead_of(self, priority: int) -> list[Request]:
        """The requests a newcomer with ``priority`` queues behind (equal or higher priority)."""
        return [e.request for e in self.ordered() if e.priority >= priority]

    def admit(self, inventory: Inventory) -> Admission:
        """Place, in queue order, every entry that fits now without taking a card an earlier
        waiter would accept; placements are allocated in ``inventory`` and leave the queue."""
        placed: list[Placement] = []
        never: list[Unplaceable] = []
        blockers: list[Request] = []
        for entry in self.ordered():
            outcome = place_around(inventory, entry.request, blockers)
            if isinstance(outcome, Placement):
                inventory.allocate(outcome)
                placed.append(outcome)
                del self._entries[entry.instance_id]
            elif outcome.never:
                never.append(outcome)
                del self._entries[entry.instance_id]
            else:
                blockers.append(entry.request)
        return Admission(placed, never)


def place_around(
    inventory: Inventory, request: Request, blockers: Iterable[Request]
) -> Placement | Unplaceable:
    """Place ``request`` on cards of types none of ``blockers`` (earlier waiters) accepts."""
    blockers = list(blockers)
    if not blockers:
        return place(inventory, request)
    never = inventory.never_reason(request)
    if never is not None:
        return Unplaceable(request.instance_id, "never", never)
    free_types = tuple(
        t for t in inventory.types if request.accepts(t) and not any(b.accepts(t) for b in blockers)
    )
    outcome = place(inventory, replace(request, types=free_types)) if free_types else None
    if isinstance(outcome, Placement):
        return outcome
    return Unplaceable(
        request.instance_id, "not_now", "waiting behind earlier requests for the same GPUs"
    )


class ReleaseHistory:
    """How long recent allocations were held (a bounded window), for wait estimates."""

    def __init__(self, window: int = 50) -> None:
        self._held: deque[float] = deque(maxlen=window)

    def record(self, held_s: float) -> None:
        self._held.append(max(held_s, 0.0))

    def extend(self, durations: Iterable[float]) -> None:
        for d in durations:
            self.record(d)

    @property
    def mean_hold_s(self) -> float | None:
        return sum(self._held) / len(self._held) if self._held else None

    def estimate_wait_s(
        self, position: int, holders_since: Iterable[float], now: float
    ) -> float | None:
        """Expected seconds until the request at ``position`` starts, given when each current
        holder of a competing card started (``holders_since``). None without history."""
        mean = self.mean_hold_s
        if mean is None or position < 1:
            return None
        # A holder already past the mean is expected to leave soon, not in the past: give it
        # a tenth of the mean from now.
        releases = sorted(max(since + mean - now, mean / 10) for since in holders_since)
        if not releases:
            return None
        if position <= len(releases):
            return releases[position - 1]
        # More waiters than holders: later waiters wait for second rounds of releases.
        rounds, rest = divmod(position - 1, len(releases))
        return releases[rest] + rounds * mean
