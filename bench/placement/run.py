"""Benchmark of the pure GPU placement policy (``aigc_gateway.gpu.placement``).

1,000 GPUs in 10 pools (8 per host), 5,000 live share/whole allocations, then N placements
(whole, multi-GPU and share requests), each followed by its release so the load stays steady.
The baseline is a naive reference measured the same way: every placement scans all GPUs and
sorts the feasible ones. Both must make the same decisions. Run: ``python bench/placement/run.py``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from aigc_gateway.gpu import Gpu, Inventory, Placement, Request, Unplaceable, place

TYPES = (("rtx4090", 24.0), ("l4", 24.0), ("a100", 80.0), ("h100", 80.0))


def build(rng: random.Random) -> Inventory:
    gpus: list[Gpu] = []
    for host in range(125):
        pool = host % 10
        gpu_type, memory = TYPES[host % len(TYPES)]
        price = round(0.5 + (host * 7 % 13) * 0.25, 2)
        for i in range(8):
            gpus.append(
                Gpu(
                    id=f"gpu-{host:03d}-{i}",
                    host=f"host-{host:03d}",
                    index=i,
                    type=gpu_type,
                    memory_gib=memory,
                    pool=f"pool-{pool}",
                    pool_rank=1 + pool // 3,
                    price_per_hour=price,
                    cordoned=rng.random() < 0.01,
                )
            )
    inv = Inventory(gpus)
    live = 0
    while live < 5000:
        roll = rng.random()
        if roll < 0.03:
            req = Request(f"live-{live}", 1, None)
        else:
            req = Request(f"live-{live}", 0, rng.choice((1.0, 2.0, 3.0, 4.0)))
        decision = place(inv, req)
        if isinstance(decision, Unplaceable):
            raise SystemExit(f"could not pre-load: {decision.reason}")
        inv.allocate(decision)
        live += 1
    return inv


def workload(rng: random.Random, n: int) -> list[Request]:
    names = [t for t, _ in TYPES]
    out: list[Request] = []
    for i in range(n):
        types = tuple(rng.sample(names, 2)) if rng.random() < 0.5 else ()
        preferred = (rng.choice(names),) if rng.random() < 0.3 else ()
        roll = rng.random()
        if roll < 0.3:
            out.append(Request(f"r{i}", 1, None, types, preferred))
        elif roll < 0.45:
            out.append(Request(f"r{i}", rng.choice((2, 4)), None, types, preferred))
        else:
            out.append(Request(f"r{i}", 0, rng.choice((2.0, 6.0, 12.0)), types, preferred))
    return out


def naive_place(inv: Inventory, req: Request) -> Placement | Unplaceable:
    """Reference: scan every GPU, keep the feasible ones, sort by the full policy key."""
    feasible: list[tuple[tuple[int, float, int, int, float, str], Gpu]] = []
    for g in inv.gpus:
        if g.cordoned or not req.accepts(g.type):
            continue
        state = inv.state(g.id)
        if state.whole_owner is not None:
            continue
        pref = 0 if g.type in req.preferred_types else 1
        if req.memory_gib is None:
            if state.sharers:
                continue
            feasible.append(((g.pool_rank, g.price_per_hour, pref, 0, 0.0, g.id), g))
        else:
            remaining = g.memory_gib - state.used_gib - req.memory_gib
            if remaining < -1e-9:
                continue
            opened = 0 if state.sharers else 1
            key = (g.pool_rank, g.price_per_hour, pref, opened, remaining, g.id)
            feasible.append((key, g))
    feasible.sort(key=lambda kv: kv[0])
    if req.memory_gib is not None or req.count == 1:
        if not feasible:
            return Unplaceable(req.instance_id, "not_now", "naive")
        g = feasible[0][1]
        return Placement(req.instance_id, (g.id,), req.memory_gib, f"placed on {g.id}")
    per_host: dict[str, list[Gpu]] = {}
    for _, g in feasible:  # already in card order
        per_host.setdefault(g.host, []).append(g)
    best: tuple[tuple[int, float, int, tuple[str, ...]], list[Gpu]] | None = None
    for cards in per_host.values():
        if len(cards) < req.count:
            continue
        chosen = cards[: req.count]
        host_key = (
            max(c.pool_rank for c in chosen),
            max(c.price_per_hour for c in chosen),
            sum(1 for c in chosen if c.type not in req.preferred_types),
            tuple(c.id for c in chosen),
        )
        if best is None or host_key < best[0]:
            best = (host_key, chosen)
    if best is None:
        return Unplaceable(req.instance_id, "not_now", "naive")
    ids = tuple(c.id for c in best[1])
    return Placement(req.instance_id, ids, None, f"placed on {', '.join(ids)}")


Placer = Callable[[Inventory, Request], Placement | Unplaceable]


def run(inv: Inventory, reqs: list[Request], placer: Placer) -> tuple[float, list[object]]:
    decisions: list[object] = []
    start = time.perf_counter()
    for req in reqs:
        decision = placer(inv, req)
        if isinstance(decision, Placement):
            assert decision.explanation, "every placement needs an explanation"
            inv.allocate(decision)
            inv.release(req.instance_id)
            decisions.append(decision.gpu_ids)
        else:
            assert decision.reason
            decisions.append(None)
    return time.perf_counter() - start, decisions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5000, help="placements to time")
    parser.add_argument("--baseline-n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    inv = build(rng)
    reqs = workload(rng, args.n)
    live = len(inv.allocations)

    elapsed, decisions = run(inv, reqs, place)
    rate = args.n / elapsed
    base_reqs = reqs[: args.baseline_n]
    base_elapsed, base_decisions = run(inv, base_reqs, naive_place)
    base_rate = len(base_reqs) / base_elapsed
    assert base_decisions == decisions[: len(base_reqs)], "policy and naive reference disagree"
    assert len(inv.allocations) == live
    inv.verify()

    placed = sum(1 for d in decisions if d is not None)
    print(f"{'placer':<10} {'placements':>10} {'seconds':>9} {'per s':>10}")
    print(f"{'indexed':<10} {args.n:>10} {elapsed:>9.3f} {rate:>10.0f}")
    print(f"{'naive':<10} {len(base_reqs):>10} {base_elapsed:>9.3f} {base_rate:>10.0f}")
    print(f"speed-up x{rate / base_rate:.1f}; {placed}/{args.n} placed, rest not placeable now")
    print(
        json.dumps(
            {
                "placements_per_s": round(rate, 1),
                "gpus": len(inv.gpus),
                "live_instances": live,
                "baseline_placements_per_s": round(base_rate, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
