"""The GPU broker: the live allocations, the wait queue and cordons, in memory.

The controller is its only writer. It asks :meth:`GpuBroker.acquire` before launching an engine
that wants GPUs (having first synchronised the allocations with the store under the store's GPU
lock, :meth:`GpuBroker.sync_held`, since other gateway processes book GPUs too), records what it
got in the store in the same transaction as the move to ``starting``, and calls :meth:`GpuBroker.release` in the transaction that records the engine gone;
:meth:`GpuBroker.admit` then starts whoever waited. On start the broker is rebuilt from the store
(:meth:`GpuBroker.restore`), so a gateway restart neither loses nor doubles an allocation and the
queue keeps its order. All methods are synchronous and run on the event loop, so each decision sees
a consistent inventory without locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from aigc_gateway.gpu import (
    Admission,
    Allocation,
    Gpu,
    Inventory,
    Placement,
    ReleaseHistory,
    Request,
    Unplaceable,
    WaitQueue,
    competes,
)
from aigc_gateway.gpu.placement import PlacementError
from aigc_gateway.gpu.queue import place_around
from aigc_gateway.runtime.base import GpuGrant


@dataclass(frozen=True, slots=True)
class QueueInfo:
    position: int
    length: int
    priority: int
    since: float
    estimate_s: float | None


@dataclass(frozen=True, slots=True)
class Held:
    """An allocation read back from the store at start."""

    instance_id: str
    gpu_ids: tuple[str, ...]
    memory_gib: float | None
    since: float
    placement: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A waiting request read back from the store at start."""

    request: Request
    priority: int
    since: float


def device_name(gpu: Gpu) -> str:
    """How CUDA names the card: its UUID where the id is one, else its index on the host."""
    return gpu.id if gpu.id.startswith(("GPU-", "MIG-")) else str(gpu.index)


class GpuBroker:
    def __init__(
        self, gpus: Iterable[Gpu], note: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._gpus = {g.id: g for g in gpus}
        self._cordons: dict[str, str] = {}
        self.inventory = Inventory(self._gpus.values())
        self.queue = WaitQueue()
        self.history = ReleaseHistory()
        self.note = note
        """What the inventory is made of (declared, found by NVML, or why it is empty)."""
        self._clock = clock
        self._since: dict[str, float] = {}
        self._why: dict[str, str] = {}
        self._reserved: set[str] = set()
        """Allocated here, not yet seen recorded in the store (see :meth:`sync_held`)."""
        self._elsewhere: set[str] = set()
        """Queue entries of instances another gateway process drives (see :meth:`sync_queue`):
        they keep their place, so nobody here overtakes them, but are never started here."""

    # -- reading --------------------------------------------------------------------------------

    def gpu(self, gpu_id: str) -> Gpu | None:
        return self._gpus.get(gpu_id)

    def cordon_mode(self, gpu_id: str) -> str | None:
        return self._cordons.get(gpu_id)

    def explanation(self, instance_id: str) -> str | None:
        return self._why.get(instance_id)

    def held_since(self, instance_id: str) -> float | None:
        return self._since.get(instance_id)

    def never_reason(self, request: Request) -> str | None:
        if not self._gpus:
            return "this gateway has no GPU (CPU templates only)"
        return self.inventory.never_reason(request)

    def waits_elsewhere(self, instance_id: str) -> bool:
        """Whether ``instance_id`` is in the queue as another process's waiter."""
        return instance_id in self._elsewhere

    def queue_info(self, instance_id: str) -> QueueInfo | None:
        ordered = self.queue.ordered()
        for n, entry in enumerate(ordered, start=1):
            if entry.instance_id == instance_id:
                now = self._clock()
                holders = [
                    self._since.get(a.instance_id, now)
                    for a in self.inventory.allocations
                    if any(entry.request.accepts(self.inventory.gpu(g).type) for g in a.gpu_ids)
                ]
                ahead = sum(1 for e in ordered[: n - 1] if competes(e.request, entry.request))
                return QueueInfo(
                    position=n,
                    length=len(ordered),
                    priority=entry.priority,
                    since=entry.enqueued_at,
                    estimate_s=self.history.estimate_wait_s(ahead + 1, holders, now),
                )
        return None

    # -- changing -------------------------------------------------------------------------------

    def restore(
        self,
        held: Iterable[Held],
        queued: Iterable[Queued],
        cordons: dict[str, str],
    ) -> list[str]:
        """Rebuild from the store; return the ids of allocations that no longer fit (a card
        was removed from the configuration), which the caller treats as released."""
        self._cordons = {g: m for g, m in cordons.items() if g in self._gpus}
        self._rebuild([])
        self._reserved = set()
        dropped = []
        for h in held:
            try:
                self.inventory.allocate(Allocation(h.instance_id, h.gpu_ids, h.memory_gib))
            except PlacementError:
                dropped.append(h.instance_id)
                continue
            self._since[h.instance_id] = h.since
            self._why[h.instance_id] = h.placement
        for q in sorted(queued, key=lambda q: (-q.priority, q.since)):
            self.queue.add(q.request, priority=q.priority, at=q.since)
        return dropped

    def sync_held(self, held: Iterable[Held]) -> None:
        """Make the allocations exactly those the store records (``held``): other gateway
        processes book and free GPUs too, plus those made here and not recorded yet (an
        admission's, whose launch records it) where they still fit; one that does not (another
        process took the card meanwhile) is dropped, and its launch asks again. The queue and
        the cordons stay."""
        held = list(held)
        recorded = {h.instance_id for h in held}
        pending = [
            a
            for a in self.inventory.allocations
            if a.instance_id in self._reserved and a.instance_id not in recorded
        ]
        since, why = self._since, self._why
        self._rebuild([])
        self._since, self._why = {}, {}
        self._reserved -= recorded
        for h in held:
            try:
                self.inventory.allocate(Allocation(h.instance_id, h.gpu_ids, h.memory_gib))
            except PlacementError:
                continue  # a card no longer configured here; restore() reported it
            self._since[h.instance_id] = since.get(h.instance_id, h.since)
            self._why[h.instance_id] = why.get(h.instance_id, h.placement)
        for a in pending:
            try:
                self.inventory.allocate(a)
            except PlacementError:
                self._reserved.discard(a.instance_id)
                continue
            self._since[a.instance_id] = since.get(a.instance_id, self._clock())
            self._why[a.instance_id] = why.get(a.instance_id, "")

    def sync_queue(self, elsewhere: Iterable[Queued]) -> None:
        """Make the queue's entries of instances other processes drive exactly ``elsewhere``
        (read from the store): one queue in the order of the store's ``(priority, queued_at)``
        across every gateway, so a process that frees a card never hands it to its own
        later waiter ahead of an earlier one waiting through another process. An instance
        this process waited for or reserved and another now drives is handed over (its
        reservation here is dropped)."""
        entries = {q.request.instance_id: q for q in elsewhere}
        for gone in self._elsewhere - entries.keys():
            self.queue.remove(gone)
        for iid, q in entries.items():
            if iid not in self._elsewhere:
                self.queue.remove(iid)
                if iid in self._reserved:
                    self.release(iid)
            self.queue.add(q.request, priority=q.priority, at=q.since)
        self._elsewhere = set(entries)

    def acquire(self, request: Request, *, priority: int = 0) -> Placement | Unplaceable:
        """GPUs for ``request`` now, or why not. ``not_now`` means it waits in the queue (it
        keeps its place across calls); :meth:`admit` places it when capacity frees up."""
        iid = request.instance_id
        held = self.inventory.allocation(iid)
        if held is not None:
            return Placement(iid, held.gpu_ids, held.memory_gib, self._why.get(iid, ""))
        now = self._clock()
        why = self.never_reason(request)
        if why is not None:
            self.queue.remove(iid)
            return Unplaceable(iid, "never", why)
        if iid in self.queue:
            return self._waiting(iid)  # admission places waiters, in order
        outcome = place_around(self.inventory, request, self.queue.ahead_of(priority))
        if isinstance(outcome, Placement):
            self._take(outcome, now)
            return outcome
        if outcome.never:
            return outcome
        self.queue.add(request, priority=priority, at=now)
        return self._waiting(iid)

    def leave_queue(self, instance_id: str) -> bool:
        return self.queue.remove(instance_id)

    def release(self, instance_id: str) -> bool:
        """Free the instance's GPUs (idempotent) and remember how long they were held."""
        released = self.inventory.release(instance_id)
        self._reserved.discard(instance_id)
        since = self._since.pop(instance_id, None)
        self._why.pop(instance_id, None)
        if released is None:
            return False
        if since is not None:
            self.history.record(self._clock() - since)
        return True

    def admit(self) -> Admission:
        """Place waiting requests that fit now, in queue order. An entry another process
        drives that would be placed is not: the cards stay free for it (nobody here behind it
        takes them), it keeps its place, and :attr:`Admission.elsewhere` names it, for its
        process to be told."""
        entries = {e.instance_id: e for e in self.queue.ordered()}
        admission = self.queue.admit(self.inventory)
        now = self._clock()
        placed, elsewhere = [], []
        for placement in admission.placed:
            iid = placement.instance_id
            if iid in self._elsewhere:
                self.inventory.release(iid)
                entry = entries[iid]
                self.queue.add(entry.request, priority=entry.priority, at=entry.enqueued_at)
                elsewhere.append(iid)
                continue
            placed.append(placement)
            self._reserved.add(iid)
            self._since[iid] = now
            self._why[iid] = placement.explanation
        never = [u for u in admission.never if u.instance_id not in self._elsewhere]
        self._elsewhere -= {u.instance_id for u in admission.never}
        return Admission(placed, never, elsewhere)

    def set_cordon(self, gpu_id: str, mode: str | None) -> None:
        """Cordon (``cordon``/``drain``) or uncordon (None) a card; allocations stay."""
        if gpu_id not in self._gpus:
            raise KeyError(gpu_id)
        if mode is None:
            self._cordons.pop(gpu_id, None)
        else:
            self._cordons[gpu_id] = mode
        self._rebuild(self.inventory.allocations)

    def grant(self, placement: Placement) -> GpuGrant:
        """What the runtime is told: the node, the cards by CUDA name, and a share's limit."""
        cards = [self._gpus[g] for g in placement.gpu_ids]
        devices = tuple(device_name(card) for card in cards)
        mib = None if placement.memory_gib is None else int(placement.memory_gib * 1024)
        node = cards[0].host if cards else ""  # placement keeps a request on one host
        return GpuGrant(devices=devices, memory_mib=mib, node=node)

    # -- internals ------------------------------------------------------------------------------

    def _take(self, placement: Placement, now: float) -> None:
        self.inventory.allocate(placement)
        self._reserved.add(placement.instance_id)
        self._since[placement.instance_id] = now
        self._why[placement.instance_id] = placement.explanation

    def _waiting(self, instance_id: str) -> Unplaceable:
        info = self.queue_info(instance_id)
        assert info is not None
        wait = (
            "unknown yet"
            if info.estimate_s is None
            else f"about {max(1, round(info.estimate_s / 60))} min"
        )
        return Unplaceable(
            instance_id,
            "not_now",
            f"waiting for a GPU: position {info.position} of {info.length} in the queue, "
            f"estimated wait {wait}",
        )

    def _rebuild(self, allocations: Iterable[Allocation]) -> None:
        gpus = [
            replace(g, cordoned=g.cordoned or g.id in self._cordons) for g in self._gpus.values()
        ]
        self.inventory = Inventory(gpus, allocations)
