"""Benchmark of what the Ray runtime adds on the way to an engine: the node relay, and
placement over a cluster-sized inventory.

- **Relay.** One engine (an aiohttp app on a Unix socket, as a sandboxed engine listens, in a
  process of its own) is reached through the gateway's own ASGI-proxy sessions
  (:class:`EngineSessions`) twice in the same run: directly on its socket (the local runtime's
  endpoint, the baseline) and through a node relay on 127.0.0.1 (:func:`serve_relay`, the HMAC
  handshake per connection, in a third process, as a node's relay actor is). Small responses
  (requests per second at 16 concurrent) and 10 MiB downloads (MB/s); the figures are the
  ratios relay / direct. Goal: >= 0.7 each. On one machine the relay's copying competes with
  the engine and the client for the same cores, as it would not on a node of its own.
- **Placement.** 100 nodes with 10 GPUs each (1,000 GPUs, four types, three pools), a third of
  them busy, then placements (each released after) through the gateway's placement policy.
- The start overhead on Ray (``ray_start_overhead_s_p50``) is measured by
  ``bench/ray/start.py`` on a real cluster.

Run: ``python bench/ray/run.py``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import shutil
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from aiohttp import web

from aigc_gateway.gpu import Gpu, Inventory, Request, Unplaceable, place
from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.runtime.connect import EngineSessions
from aigc_gateway.runtime.relay import RelayKey, serve_relay

INSTANCE = "0123456789abcdef0123456789abcdef"
LARGE = random.Random(0).randbytes(10 << 20)


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def large(_: web.Request) -> web.Response:
    return web.Response(body=LARGE)


async def small_rps(
    sessions: EngineSessions, endpoint: Endpoint, n: int, concurrency: int
) -> float:
    session, base = sessions.session(endpoint)
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            async with session.get(f"{base}/hello") as response:
                assert response.status == 200 and await response.read() == b"ok"

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def large_mbps(sessions: EngineSessions, endpoint: Endpoint, n: int) -> float:
    session, base = sessions.session(endpoint)
    started = time.perf_counter()
    for _ in range(n):
        async with session.get(f"{base}/large") as response:
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
            assert size == len(LARGE)
    return n * len(LARGE) / 1e6 / (time.perf_counter() - started)


def _engine_process(sock: str, ready: Event) -> None:
    """The engine, in a process of its own (as on a node): an aiohttp app on a Unix socket."""

    async def serve() -> None:
        app = web.Application()
        app.add_routes([web.get("/hello", hello), web.get("/large", large)])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, sock).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


def _relay_process(key_hex: str, sock: str, ports: Queue[int]) -> None:
    """The node's relay, in a process of its own (on a node it is the relay actor's)."""

    async def serve() -> None:
        key = RelayKey.from_hex(key_hex)
        server = await serve_relay("127.0.0.1", 0, key, {INSTANCE: sock}.get)
        ports.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def measure(
    direct: Endpoint, relayed: Endpoint, key: RelayKey, small_n: int, large_n: int, rounds: int
) -> dict[str, float]:
    figures: dict[str, list[float]] = {k: [] for k in ("ds", "rs", "dl", "rl")}
    sessions = EngineSessions(relay_key=key)
    try:
        await small_rps(sessions, direct, 200, 16)  # warm both paths
        await small_rps(sessions, relayed, 200, 16)
        for _ in range(rounds):  # interleaved, so drift hits both alike
            figures["ds"].append(await small_rps(sessions, direct, small_n, 16))
            figures["rs"].append(await small_rps(sessions, relayed, small_n, 16))
            figures["dl"].append(await large_mbps(sessions, direct, large_n))
            figures["rl"].append(await large_mbps(sessions, relayed, large_n))
    finally:
        await sessions.close()
    best = {k: max(v) for k, v in figures.items()}
    print(f"{'path':<8} {'small req/s':>12} {'10 MiB MB/s':>12}")
    print(f"{'direct':<8} {best['ds']:>12.0f} {best['dl']:>12.0f}")
    print(f"{'relay':<8} {best['rs']:>12.0f} {best['rl']:>12.0f}")
    return {
        "relay_small_rps_vs_local": round(best["rs"] / best["ds"], 3),
        "relay_large_mbps_vs_local": round(best["rl"] / best["dl"], 3),
        "local_small_rps": round(best["ds"], 1),
        "local_large_mbps": round(best["dl"], 1),
    }


def relay_figures(small_n: int, large_n: int, rounds: int) -> dict[str, float]:
    """The engine, the relay and the client (the gateway's sessions) each in their own process,
    as the gateway, a node's relay and its engine are."""
    folder = Path(tempfile.mkdtemp(prefix="aigc-bench-relay-", dir="/tmp"))
    sock = str(folder / "engine.sock")
    key = RelayKey.generate()
    spawn = multiprocessing.get_context("spawn")
    ready, ports = spawn.Event(), spawn.Queue()
    engine = spawn.Process(target=_engine_process, args=(sock, ready), daemon=True)
    relay = spawn.Process(target=_relay_process, args=(key.hex(), sock, ports), daemon=True)
    try:
        engine.start()
        if not ready.wait(30):
            raise SystemExit("the engine did not start")
        relay.start()
        port = ports.get(timeout=30)
        relayed = Endpoint(host="127.0.0.1", port=port, relay_for=INSTANCE)
        return asyncio.run(
            measure(Endpoint(unix_path=sock), relayed, key, small_n, large_n, rounds)
        )
    finally:
        for process in (relay, engine):
            process.terminate()
            process.join(10)
        shutil.rmtree(folder, ignore_errors=True)


TYPES = (("rtx4090", 24.0), ("rtx3090", 24.0), ("a100", 80.0), ("h100", 80.0))


def cluster_inventory(rng: random.Random) -> Inventory:
    gpus = []
    for node in range(100):
        gpu_type, memory = TYPES[node % len(TYPES)]
        pool, rank = ("onprem", 1) if node < 60 else ("cloud-a", 2) if node < 85 else ("cloud-b", 3)
        for i in range(10):
            gpus.append(
                Gpu(f"n{node:03d}-{i}", f"node-{node:03d}", i, gpu_type, memory, pool, rank, 1.0)
            )
    inventory = Inventory(gpus)
    for n in range(330):  # a third busy, whole cards
        decision = place(inventory, Request(f"busy-{n}", 1, None))
        assert not isinstance(decision, Unplaceable), decision
        inventory.allocate(decision)
    return inventory


def placement_figures(n: int) -> dict[str, float]:
    rng = random.Random(15)
    inventory = cluster_inventory(rng)
    names = [t for t, _ in TYPES]
    requests = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.5:
            requests.append(Request(f"r{i}", 1, None, types=(rng.choice(names),)))
        elif roll < 0.7:
            requests.append(Request(f"r{i}", rng.choice((2, 4, 8)), None))  # kept on one node
        else:
            requests.append(Request(f"r{i}", 0, rng.choice((4.0, 8.0, 12.0))))
    started = time.perf_counter()
    for request in requests:
        decision = place(inventory, request)
        if not isinstance(decision, Unplaceable):
            nodes = {inventory.gpu(g).host for g in decision.gpu_ids}
            assert len(nodes) <= 1, decision  # several GPUs of one request stay on one node
            inventory.allocate(decision)
            inventory.release(request.instance_id)
    rate = n / (time.perf_counter() - started)
    print(f"placement: {n} requests over {len(inventory.gpus)} GPUs on 100 nodes: {rate:.0f}/s")
    return {"placements_per_s": round(rate, 1), "nodes": 100, "gpus": len(inventory.gpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=3000, help="small requests per round")
    parser.add_argument("--large", type=int, default=20, help="10 MiB downloads per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--placements", type=int, default=20000)
    args = parser.parse_args()
    figures = relay_figures(args.small, args.large, args.rounds)
    figures.update(placement_figures(args.placements))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
