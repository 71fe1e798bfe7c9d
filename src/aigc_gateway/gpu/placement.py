"""The GPU placement policy: which card(s) an instance's GPU request goes to.

This module is *pure*: no I/O, no clock, no randomness, no imports from the rest of the gateway.
It works only on the in-memory :class:`Inventory` it is given, so the same inputs always give
the same decision. That keeps the policy testable with property-based tests and cheap enough to
run on every launch; whoever owns the real GPU state (the store, the runtimes) feeds it in and
applies the decisions.

Policy, in order of precedence:

1. Feasibility: the type is accepted and the card is not cordoned; whole-GPU requests only take
   completely free cards (never a card holding shares); a share only goes to a card that is not
   whole-allocated and has enough free memory; a multi-GPU request takes cards on ONE host.
2. Pool rank (lower is preferred, e.g. on-prem 1, cloud 2), then price per hour, then the
   request's preferred types, then best fit (shares pack onto already-shared cards before opening
   a free card, least remaining memory first), then GPU id for determinism.

A request that cannot be placed is :class:`Unplaceable`: ``never`` when no card of the inventory
could ever satisfy it (even if everything were free), ``not_now`` when it would fit once capacity
frees (the caller queues it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

_EPS = 1e-9


class PlacementError(ValueError):
    """An inconsistent use of the inventory (double allocation, over-commit, unknown GPU)."""


@dataclass(frozen=True, slots=True)
class Gpu:
    id: str
    host: str
    index: int
    type: str
    memory_gib: float
    pool: str
    pool_rank: int
    price_per_hour: float
    cordoned: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    """Free-form facts the admin gave the card (rack, owner team...), shown, not placed on."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """GPUs held by one instance: whole cards (``memory_gib`` None) or a share of one card."""

    instance_id: str
    gpu_ids: tuple[str, ...]
    memory_gib: float | None


class GpuRequestLike(Protocol):
    """What :meth:`Request.from_gpu_request` reads (``templates.schema.GpuRequest`` fits)."""

    @property
    def count(self) -> int: ...
    @property
    def memory_gib(self) -> float | None: ...
    @property
    def types(self) -> list[str]: ...
    @property
    def preferred_types(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Request:
    """``count`` whole GPUs, or (``memory_gib`` set, ``count`` 0 or 1) a share of one GPU."""

    instance_id: str
    count: int
    memory_gib: float | None
    types: tuple[str, ...] = ()
    preferred_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.memory_gib is not None:
            if self.memory_gib <= 0:
                raise PlacementError("a GPU share needs a positive memory_gib")
            if self.count not in (0, 1):
                raise PlacementError("ask for either whole GPUs (count) or a share, not both")
        elif self.count < 1:
            raise PlacementError("a GPU request needs count >= 1 or memory_gib")

    @property
    def is_share(self) -> bool:
        return self.memory_gib is not None

    @classmethod
    def from_gpu_request(cls, instance_id: str, gpu: GpuRequestLike) -> Request:
        return cls(
            instance_id=instance_id,
            count=gpu.count,
            memory_gib=gpu.memory_gib,
            types=tuple(gpu.types),
            preferred_types=tuple(gpu.preferred_types),
        )

    def accepts(self, gpu_type: str) -> bool:
        return not self.types or gpu_type in self.types


@dataclass(frozen=True, slots=True)
class Placement:
    instance_id: str
    gpu_ids: tuple[str, ...]
    memory_gib: float | None
    explanation: str

    @property
    def allocation(self) -> Allocation:
        return Allocation(self.instance_id, self.gpu_ids, self.memory_gib)


@dataclass(frozen=True, slots=True)
class Unplaceable:
    instance_id: str
    kind: Literal["never", "not_now"]
    reason: str

    @property
    def never(self) -> bool:
        return self.kind == "never"


@dataclass(slots=True, eq=False)
class _Group:
    """Non-cordoned GPUs that are interchangeable for the ordering (same pool/price/type/size)."""

    pool: str
    pool_rank: int
    price: float
    type: str
    memory_gib: float
    free: set[str] = field(default_factory=set)
    """Completely free cards."""
    shared: set[str] = field(default_factory=set)
    """Cards holding at least one share (and no whole allocation)."""


@dataclass(frozen=True, slots=True)
class GpuState:
    whole_owner: str | None
    used_gib: float
    sharers: frozenset[str]


class Inventory:
    """GPUs and live allocations, with per-GPU state and indexes kept up to date incrementally."""

    def __init__(self, gpus: Iterable[Gpu], allocations: Iterable[Allocation] = ()) -> None:
        self._gpus: dict[str, Gpu] = {}
        self._allocs: dict[str, Allocation] = {}
        self._whole: dict[str, str] = {}
        self._used: dict[str, float] = {}
        self._sharers: dict[str, set[str]] = {}
        self._group_of: dict[str, _Group] = {}
        self._groups: list[_Group] = []
        self._host_free: dict[str, set[str]] = {}
        self._type_max_mem: dict[str, float] = {}
        self._host_types: dict[str, Counter[str]] = {}
        groups: dict[tuple[str, int, float, str, float], _Group] = {}
        for gpu in gpus:
            if gpu.id in self._gpus:
                raise PlacementError(f"duplicate GPU id {gpu.id}")
            self._gpus[gpu.id] = gpu
            self._sharers[gpu.id] = set()
            self._used[gpu.id] = 0.0
            # Cordoned cards count for what could *ever* fit (they come back), not for placing.
            self._type_max_mem[gpu.type] = max(
                self._type_max_mem.get(gpu.type, 0.0), gpu.memory_gib
            )
            self._host_types.setdefault(gpu.host, Counter())[gpu.type] += 1
            if gpu.cordoned:
                continue
            key = (gpu.pool, gpu.pool_rank, gpu.price_per_hour, gpu.type, gpu.memory_gib)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(*key)
                self._groups.append(group)
            group.free.add(gpu.id)
            self._group_of[gpu.id] = group
            self._host_free.setdefault(gpu.host, set()).add(gpu.id)
        for allocation in allocations:
            self.allocate(allocation)

    # --- reading -------------------------------------------------------------------------------

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        return tuple(self._gpus.values())

    @property
    def types(self) -> tuple[str, ...]:
        """Every GPU type in the inventory (cordoned cards included), sorted."""
        return tuple(sorted(self._type_max_mem))

    @property
    def allocations(self) -> tuple[Allocation, ...]:
        return tuple(self._allocs.values())

    def gpu(self, gpu_id: str) -> Gpu:
        return self._gpus[gpu_id]

    def allocation(self, instance_id: str) -> Allocation | None:
        return self._allocs.get(instance_id)

    def state(self, gpu_id: str) -> GpuState:
        return GpuState(
            self._whole.get(gpu_id), self._used[gpu_id], frozenset(self._sharers[gpu_id])
        )

    def free_gib(self, gpu_id: str) -> float:
        """Memory a new share could take (0 for a whole-allocated card)."""
        if gpu_id in self._whole:
            return 0.0
        return self._gpus[gpu_id].memory_gib - self._used[gpu_id]

    def verify(self) -> None:
        """Recompute all state from the allocation list; raise if the incremental state differs."""
        fresh = Inventory(self._gpus.values(), self._allocs.values())
        for gid in self._gpus:
            if self.state(gid) != fresh.state(gid):
                raise PlacementError(f"state of {gid} differs from a recomputation")
            mine, theirs = self._group_of.get(gid), fresh._group_of.get(gid)
            if (mine is None) != (theirs is None):
                raise PlacementError(f"group index of {gid} differs")
            if mine is not None and theirs is not None:
                if (gid in mine.free) != (gid in theirs.free):
                    raise PlacementError(f"free index of {gid} differs")
                if (gid in mine.shared) != (gid in theirs.shared):
                    raise PlacementError(f"shared index of {gid} differs")
        for host, free in self._host_free.items():
            if free != fresh._host_free.get(host, set()):
                raise PlacementError(f"free index of host {host} differs")

    # --- changing ------------------------------------------------------------------------------

    def allocate(self, decision: Placement | Allocation) -> None:
        """Record an allocation; it is checked against the policy's feasibility rules."""
        a = decision.allocation if isinstance(decision, Placement) else decision
        if a.instance_id in self._allocs:
            raise PlacementError(f"instance {a.instance_id} is already placed")
        if not a.gpu_ids or len(set(a.gpu_ids)) != len(a.gpu_ids):
            raise PlacementError("an allocation needs distinct GPU ids")
        for gid in a.gpu_ids:
            if gid not in self._gpus:
                raise PlacementError(f"unknown GPU {gid}")
        if a.memory_gib is None:
            if len({self._gpus[g].host for g in a.gpu_ids}) != 1:
                raise PlacementError("whole GPUs of one instance must be on one host")
            for gid in a.gpu_ids:
                if gid in self._whole or self._sharers[gid]:
                    raise PlacementError(f"GPU {gid} is not free")
            for gid in a.gpu_ids:
                self._whole[gid] = a.instance_id
                self._unindex_free(gid)
        else:
            if len(a.gpu_ids) != 1:
                raise PlacementError("a share is on exactly one GPU")
            gid = a.gpu_ids[0]
            if gid in self._whole:
                raise PlacementError(f"GPU {gid} is whole-allocated")
            if self._used[gid] + a.memory_gib > self._gpus[gid].memory_gib + _EPS:
                raise PlacementError(f"GPU {gid} has not {a.memory_gib} GiB free")
            self._used[gid] += a.memory_gib
            self._sharers[gid].add(a.instance_id)
            self._unindex_free(gid)
            group = self._group_of.get(gid)
            if group is not None:
                group.shared.add(gid)
        self._allocs[a.instance_id] = a

    def release(self, instance_id: str) -> Allocation | None:
        """Free an instance's GPUs; releasing an unknown instance does nothing."""
        a = self._allocs.pop(instance_id, None)
        if a is None:
            return None
        if a.memory_gib is None:
            for gid in a.gpu_ids:
                del self._whole[gid]
                self._index_free(gid)
        else:
            gid = a.gpu_ids[0]
            sharers = self._sharers[gid]
            sharers.discard(instance_id)
            if sharers:
                self._used[gid] -= a.memory_gib
            else:
                self._used[gid] = 0.0  # no float drift on an empty card
                group = self._group_of.get(gid)
                if group is not None:
                    group.shared.discard(gid)
                self._index_free(gid)
        return a

    def _unindex_free(self, gid: str) -> None:
        group = self._group_of.get(gid)
        if group is not None:
            group.free.discard(gid)
            self._host_free[self._gpus[gid].host].discard(gid)

    def _index_free(self, gid: str) -> None:
        group = self._group_of.get(gid)
        if group is not None:
            group.free.add(gid)
            self._host_free[self._gpus[gid].host].add(gid)

    # --- static capacity -----------------------------------------------------------------------

    def never_reason(self, request: Request) -> str | None:
        """Why no card of this inventory could ever satisfy ``request`` (None: it could)."""
        types = [t for t in self._type_max_mem if request.accepts(t)]
        if not types:
            wanted = ", ".join(request.types) or "any"
            return f"no GPU of an accepted type ({wanted}) in the inventory"
        if request.memory_gib is not None:
            biggest = max(self._type_max_mem[t] for t in types)
            if request.memory_gib > biggest + _EPS:
                return (
                    f"a {request.memory_gib:g} GiB share is larger than any accepted card "
                    f"({biggest:g} GiB)"
                )
            return None
        most = max(
            sum(n for t, n in counter.items() if request.accepts(t))
            for counter in self._host_types.values()
        )
        if request.count > most:
            return f"{request.count} GPUs asked, but no host has more than {most} accepted GPUs"
        return None


def _tier(group: _Group, request: Request) -> tuple[int, float, int]:
    return (group.pool_rank, group.price, 0 if group.type in request.preferred_types else 1)


def place(inventory: Inventory, request: Request) -> Placement | Unplaceable:
    """Choose GPUs for ``request`` without changing ``inventory`` (see the module's policy)."""
    if request.instance_id in inventory._allocs:
        raise PlacementError(f"instance {request.instance_id} is already placed")
    if request.memory_gib is not None:
        found = _place_share(inventory, request, request.memory_gib)
    elif request.count == 1:
        found = _place_single(inventory, request)
    else:
        found = _place_multi(inventory, request)
    if found is not None:
        return found
    reason = inventory.never_reason(request)
    if reason is not None:
        return Unplaceable(request.instance_id, "never", reason)
    return Unplaceable(
        request.instance_id, "not_now", "every accepted GPU is busy; it fits once capacity frees"
    )


def _candidate_groups(inv: Inventory, request: Request) -> list[_Group]:
    groups = [g for g in inv._groups if request.accepts(g.type)]
    groups.sort(key=lambda g: _tier(g, request))
    return groups


def _describe(gpu: Gpu, request: Request) -> str:
    preferred = ", preferred type" if gpu.type in request.preferred_types else ""
    return (
        f"({gpu.pool}, {gpu.type}): rank {gpu.pool_rank}, "
        f"price {gpu.price_per_hour:.2f}/h{preferred}"
    )


def _place_share(inv: Inventory, request: Request, mem: float) -> Placement | None:
    best: tuple[int, float, str] | None = None
    tier: tuple[int, float, int] | None = None
    for group in _candidate_groups(inv, request):
        this_tier = _tier(group, request)
        if best is not None and this_tier != tier:
            break  # a better tier already has a candidate
        if group.memory_gib + _EPS < mem:
            continue
        used = inv._used
        for gid in group.shared:
            remaining = group.memory_gib - used[gid] - mem
            if remaining >= -_EPS:
                key = (0, remaining, gid)
                if best is None or key < best:
                    best, tier = key, this_tier
        if group.free:
            key = (1, group.memory_gib - mem, min(group.free))
            if best is None or key < best:
                best, tier = key, this_tier
    if best is None:
        return None
    packed, remaining, gid = best
    gpu = inv._gpus[gid]
    how = "packed onto a shared card" if packed == 0 else "opened a free card"
    explanation = (
        f"placed on {gid} {_describe(gpu, request)}, "
        f"{max(remaining, 0.0):g} of {gpu.memory_gib:g} GiB free, {how}"
    )
    return Placement(request.instance_id, (gid,), mem, explanation)


def _place_single(inv: Inventory, request: Request) -> Placement | None:
    best: str | None = None
    tier: tuple[int, float, int] | None = None
    for group in _candidate_groups(inv, request):
        this_tier = _tier(group, request)
        if best is not None and this_tier != tier:
            break
        if group.free:
            gid = min(group.free)
            if best is None or gid < best:
                best, tier = gid, this_tier
    if best is None:
        return None
    gpu = inv._gpus[best]
    explanation = f"placed on {best} {_describe(gpu, request)}, whole GPU ({gpu.memory_gib:g} GiB)"
    return Placement(request.instance_id, (best,), None, explanation)


def _multi_key(gpus: list[Gpu], request: Request) -> tuple[int, float, int, tuple[str, ...]]:
    return (
        max(g.pool_rank for g in gpus),
        max(g.price_per_hour for g in gpus),
        sum(1 for g in gpus if g.type not in request.preferred_types),
        tuple(g.id for g in gpus),
    )


def _card_key(gpu: Gpu, request: Request) -> tuple[int, float, int, str]:
    pref = 0 if gpu.type in request.preferred_types else 1
    return (gpu.pool_rank, gpu.price_per_hour, pref, gpu.id)


def _place_multi(inv: Inventory, request: Request) -> Placement | None:
    """Whole GPUs on one host: each host offers its best ``count`` free cards; the host whose
    worst chosen card ranks best (rank, then price, then fewest non-preferred) wins."""
    n = request.count
    best_key: tuple[int, float, int, tuple[str, ...]] | None = None
    best: list[Gpu] = []
    gpus = inv._gpus
    for free in inv._host_free.values():
        if len(free) < n:
            continue
        cards = [gpus[g] for g in free if request.accepts(gpus[g].type)]
        if len(cards) < n:
            continue
        cards.sort(key=lambda g: _card_key(g, request))
        chosen = cards[:n]
        key = _multi_key(chosen, request)
        if best_key is None or key < best_key:
            best_key, best = key, chosen
    if best_key is None:
        return None
    ids = tuple(g.id for g in best)
    pools = "/".join(sorted({g.pool for g in best}))
    types = "/".join(sorted({g.type for g in best}))
    preferred = ", preferred type" if best_key[2] == 0 and request.preferred_types else ""
    explanation = (
        f"placed on {', '.join(ids)} on {best[0].host} ({pools}, {types}): "
        f"rank {best_key[0]}, price {best_key[1]:.2f}/h per GPU{preferred}, {n} whole GPUs"
    )
    return Placement(request.instance_id, ids, None, explanation)
