"""Property-based and example tests of the pure GPU placement policy."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigc_gateway.gpu import (
    Allocation,
    Gpu,
    Inventory,
    Placement,
    PlacementError,
    Request,
    Unplaceable,
    place,
)

TYPES = ("rtx4090", "a100", "l4")
MEMORY = {"rtx4090": 24.0, "a100": 80.0, "l4": 24.0}
POOLS = (("onprem", 1), ("cloud", 2), ("spot", 2))


@st.composite
def inventories(draw: st.DrawFn) -> list[Gpu]:
    gpus: list[Gpu] = []
    for h in range(draw(st.integers(1, 4))):
        pool, rank = draw(st.sampled_from(POOLS))
        price = draw(st.sampled_from((0.5, 0.9, 1.5)))
        for i in range(draw(st.integers(1, 4))):
            gpu_type = draw(st.sampled_from(TYPES))
            gpus.append(
                Gpu(
                    id=f"gpu-{h}-{i}",
                    host=f"host-{h}",
                    index=i,
                    type=gpu_type,
                    memory_gib=MEMORY[gpu_type],
                    pool=pool,
                    pool_rank=rank,
                    price_per_hour=price,
                    cordoned=draw(st.booleans()) and draw(st.booleans()),
                )
            )
    return gpus


@st.composite
def requests(draw: st.DrawFn, instance_id: str) -> Request:
    types = tuple(draw(st.lists(st.sampled_from((*TYPES, "h100")), max_size=2, unique=True)))
    preferred = tuple(draw(st.lists(st.sampled_from(TYPES), max_size=1)))
    if draw(st.booleans()):
        memory = draw(st.sampled_from((2.0, 4.0, 8.0, 12.5, 20.0, 40.0, 100.0)))
        return Request(instance_id, 0, memory, types, preferred)
    return Request(instance_id, draw(st.integers(1, 5)), None, types, preferred)


@dataclass
class Card:
    whole: str | None = None
    used: float = 0.0
    sharers: int = 0


def recompute(gpus: list[Gpu], allocations: tuple[Allocation, ...]) -> dict[str, Card]:
    cards = {g.id: Card() for g in gpus}
    for a in allocations:
        for gid in a.gpu_ids:
            card = cards[gid]
            if a.memory_gib is None:
                assert card.whole is None, "two whole allocations on one card"
                card.whole = a.instance_id
            else:
                card.used += a.memory_gib
                card.sharers += 1
    return cards


def check_invariants(inv: Inventory, gpus: list[Gpu]) -> None:
    by_id = {g.id: g for g in gpus}
    cards = recompute(gpus, inv.allocations)
    for gid, card in cards.items():
        assert not (card.whole and card.sharers), "whole and shared on one card"
        assert card.used <= by_id[gid].memory_gib + 1e-6, "memory over-committed"
        state = inv.state(gid)
        assert state.whole_owner == card.whole
        assert state.used_gib == pytest.approx(card.used, abs=1e-6)
        assert len(state.sharers) == card.sharers
    for a in inv.allocations:
        assert len({by_id[g].host for g in a.gpu_ids}) == 1, "spread over hosts"
    inv.verify()


def feasible_single(gpus: list[Gpu], cards: dict[str, Card], req: Request) -> list[Gpu]:
    out = []
    for g in gpus:
        if g.cordoned or not req.accepts(g.type):
            continue
        card = cards[g.id]
        if req.memory_gib is None:
            if card.whole is None and card.sharers == 0:
                out.append(g)
        elif card.whole is None and g.memory_gib - card.used >= req.memory_gib - 1e-9:
            out.append(g)
    return out


def reference_choice(gpus: list[Gpu], cards: dict[str, Card], req: Request) -> str | None:
    """Brute force: every feasible card, sorted by the full policy key."""
    options = feasible_single(gpus, cards, req)
    if not options:
        return None

    def key(g: Gpu) -> tuple[int, float, int, int, float, str]:
        pref = 0 if g.type in req.preferred_types else 1
        if req.memory_gib is None:
            return (g.pool_rank, g.price_per_hour, pref, 0, 0.0, g.id)
        card = cards[g.id]
        opened = 0 if card.sharers else 1
        return (g.pool_rank, g.price_per_hour, pref, opened, g.memory_gib - card.used, g.id)

    return min(options, key=key).id


def hosts_with(gpus: list[Gpu], cards: dict[str, Card], req: Request) -> dict[str, list[Gpu]]:
    per_host: dict[str, list[Gpu]] = {}
    for g in feasible_single(gpus, cards, req):
        per_host.setdefault(g.host, []).append(g)
    return {h: cs for h, cs in per_host.items() if len(cs) >= req.count}


def fits_empty(gpus: list[Gpu], req: Request) -> bool:
    """Whether ``req`` fits the inventory with everything free and nothing cordoned (a cordoned
    card comes back, so a request that needs it is "not now", never "never")."""
    gpus = [replace(g, cordoned=False) for g in gpus]
    empty = recompute(gpus, ())
    if req.memory_gib is not None or req.count == 1:
        return bool(feasible_single(gpus, empty, req))
    return bool(hosts_with(gpus, empty, req))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), gpus=inventories())
def test_random_place_release_sequences(data: st.DataObject, gpus: list[Gpu]) -> None:
    inv = Inventory(gpus)
    live: list[str] = []
    for step in range(data.draw(st.integers(1, 30))):
        release_now: bool = data.draw(st.booleans())
        if live and release_now:
            victim = data.draw(st.sampled_from(live))
            live.remove(victim)
            assert inv.release(victim) is not None
            assert inv.release(victim) is None  # idempotent
            check_invariants(inv, gpus)
            continue
        req = data.draw(requests(f"i{step}"))
        cards = recompute(gpus, inv.allocations)
        decision = place(inv, req)
        check_invariants(inv, gpus)  # placing alone changes nothing
        if isinstance(decision, Unplaceable):
            assert decision.reason
            assert decision.never == (not fits_empty(gpus, req))
            if req.memory_gib is not None or req.count == 1:
                assert not feasible_single(gpus, cards, req)
            else:
                assert not hosts_with(gpus, cards, req)
            continue
        assert decision.explanation.startswith("placed on ")
        by_id = {g.id: g for g in gpus}
        chosen = [by_id[g] for g in decision.gpu_ids]
        if req.memory_gib is not None or req.count == 1:
            assert decision.gpu_ids == (reference_choice(gpus, cards, req),)
        else:
            assert len(chosen) == req.count
            assert len({g.host for g in chosen}) == 1
            for g in chosen:
                assert cards[g.id].whole is None and cards[g.id].sharers == 0
            # pool rank respected: no host entirely in a better rank could have taken it
            worst = max(g.pool_rank for g in chosen)
            for cs in hosts_with(gpus, cards, req).values():
                best_possible = sorted(c.pool_rank for c in cs)[req.count - 1]
                assert best_possible >= worst
        inv.allocate(decision)
        live.append(req.instance_id)
        check_invariants(inv, gpus)
    # release everything, then the same requests fit an empty inventory again
    for instance_id in live:
        inv.release(instance_id)
    check_invariants(inv, gpus)
    assert not inv.allocations


def _gpu(gid: str, host: str = "h1", **kw: object) -> Gpu:
    base: dict[str, object] = {
        "host": host,
        "index": 0,
        "type": "rtx4090",
        "memory_gib": 24.0,
        "pool": "onprem",
        "pool_rank": 1,
        "price_per_hour": 0.9,
    }
    base.update(kw)
    return Gpu(gid, **base)  # type: ignore[arg-type]


def test_shares_pack_before_opening_a_card() -> None:
    inv = Inventory([_gpu("gpu-1"), _gpu("gpu-2"), _gpu("gpu-3")])
    first = place(inv, Request("a", 0, 10.0))
    assert isinstance(first, Placement)
    assert first.gpu_ids == ("gpu-1",)
    assert "opened a free card" in first.explanation
    inv.allocate(first)
    second = place(inv, Request("b", 0, 8.0))
    assert isinstance(second, Placement)
    assert second.gpu_ids == ("gpu-1",)
    assert second.explanation == (
        "placed on gpu-1 (onprem, rtx4090): rank 1, price 0.90/h, "
        "6 of 24 GiB free, packed onto a shared card"
    )
    inv.allocate(second)
    # does not fit the 6 GiB left: opens gpu-2; a whole GPU then avoids shared cards
    third = place(inv, Request("c", 0, 10.0))
    assert isinstance(third, Placement) and third.gpu_ids == ("gpu-2",)
    inv.allocate(third)
    whole = place(inv, Request("d", 1, None))
    assert isinstance(whole, Placement) and whole.gpu_ids == ("gpu-3",)
    assert "whole GPU" in whole.explanation


def test_best_fit_picks_least_remaining() -> None:
    inv = Inventory([_gpu("gpu-1"), _gpu("gpu-2")])
    inv.allocate(Allocation("a", ("gpu-1",), 4.0))
    inv.allocate(Allocation("b", ("gpu-2",), 14.0))
    decision = place(inv, Request("c", 0, 8.0))
    assert isinstance(decision, Placement) and decision.gpu_ids == ("gpu-2",)


def test_rank_then_price_then_preferred() -> None:
    gpus = [
        _gpu("c1", pool="cloud", pool_rank=2, price_per_hour=0.1),
        _gpu("p-expensive", price_per_hour=2.0, type="l4"),
        _gpu("p-cheap-a100", price_per_hour=0.9, type="a100", memory_gib=80.0),
        _gpu("p-cheap-4090", price_per_hour=0.9),
    ]
    inv = Inventory(gpus)
    d = place(inv, Request("x", 1, None, preferred_types=("rtx4090",)))
    assert isinstance(d, Placement) and d.gpu_ids == ("p-cheap-4090",)
    assert "preferred type" in d.explanation
    d = place(inv, Request("y", 1, None))
    assert isinstance(d, Placement) and d.gpu_ids == ("p-cheap-4090",)  # tie broken by id
    d = place(inv, Request("z", 1, None, types=("rtx4090",)))
    assert isinstance(d, Placement) and d.gpu_ids == ("p-cheap-4090",)


def test_multi_gpu_on_one_host() -> None:
    gpus = [_gpu(f"a{i}", host="ha", index=i) for i in range(2)]
    gpus += [_gpu(f"b{i}", host="hb", index=i, pool="cloud", pool_rank=2) for i in range(4)]
    inv = Inventory(gpus)
    d = place(inv, Request("x", 2, None))
    assert isinstance(d, Placement) and d.gpu_ids == ("a0", "a1")
    assert "2 whole GPUs" in d.explanation
    d = place(inv, Request("y", 3, None))
    assert isinstance(d, Placement) and d.gpu_ids == ("b0", "b1", "b2")


def test_never_and_not_now() -> None:
    inv = Inventory(
        [_gpu("gpu-1"), _gpu("gpu-2", host="h2"), _gpu("gpu-3", host="h3", cordoned=True)]
    )
    for req, words in [
        (Request("a", 1, None, types=("h100",)), "accepted type"),
        (Request("b", 2, None), "no host"),
        (Request("c", 0, 30.0), "larger than any"),
    ]:
        d = place(inv, req)
        assert isinstance(d, Unplaceable) and d.never and words in d.reason
    inv.allocate(Allocation("w1", ("gpu-1",), None))
    inv.allocate(Allocation("w2", ("gpu-2",), None))
    d = place(inv, Request("d", 0, 4.0))
    assert isinstance(d, Unplaceable) and d.kind == "not_now"


def test_misuse_is_rejected() -> None:
    inv = Inventory([_gpu("gpu-1")])
    inv.allocate(Allocation("a", ("gpu-1",), 20.0))
    with pytest.raises(PlacementError):
        inv.allocate(Allocation("a", ("gpu-1",), 1.0))
    with pytest.raises(PlacementError):
        inv.allocate(Allocation("b", ("gpu-1",), 5.0))
    with pytest.raises(PlacementError):
        inv.allocate(Allocation("c", ("gpu-1",), None))
    with pytest.raises(PlacementError):
        Request("d", 2, 4.0)
    with pytest.raises(PlacementError):
        Request("e", 0, None)


def test_from_gpu_request() -> None:
    from aigc_gateway.catalog.schema import GpuRequest

    req = Request.from_gpu_request("i", GpuRequest(memory_gib=8, types=["l4"]))
    assert req.is_share and req.types == ("l4",) and req.memory_gib == 8
