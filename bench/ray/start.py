"""Benchmark of the start overhead on Ray: how much longer an engine takes from create to ready
on the Ray runtime than the same engine's bare start on the local runtime, in the same run.

- **Cluster.** A real cluster of four nodes on this machine, on 127.0.0.1
  (``tests/support/ray_cluster.py``: a head without engines and three engine nodes, started in
  a helper process of their own); this process joins it as the driver. The Ray runtime is built
  as the gateway builds it (:func:`aigc_gateway.runtime.ray.make_runtime` from :class:`Settings`
  with ``runtime: ray``, ``sandbox: off``, ``ray_node_dir`` the cluster's), the baseline too
  (:func:`aigc_gateway.runtime.plugins.local`, the ``runtime: local`` of the same settings,
  which is also what each Ray node's supervisor runs its engine with).
- **Engine.** The runtime tests' engine (``tests/runtime/engines/engine.py``) with the same
  readiness check (``GET /health``) on both: on a loopback port, or with ``--uds`` on a Unix
  socket (on Ray, then reached through the node's relay).
- **Rounds.** ``--n`` times, interleaved (the order alternates each round, so drift hits both
  alike), each with a fresh instance id: (a) ``start`` + ``wait_ready`` on the local runtime,
  (b) ``start`` + ``wait_ready`` on the Ray runtime (a new supervisor actor, scheduled on an
  engine node); each then ``stop`` + ``forget``, untimed in the figure. ``--warmup`` rounds
  before are not counted (the first Ray start is reported on its own).
- **Figure.** ``ray_start_overhead_s_p50`` = p50(Ray) - p50(local), create → engine ready.
  Goal: <= 1.5 s.

The cluster is shut down at the end whatever happens, and no raylet of it is left (checked).

Run: ``python bench/ray/start.py [--n 10] [--uds]`` (``PYTHONPATH=src:.``). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.runtime.test_local import spec  # noqa: E402
from tests.support.ray_cluster import RayCluster, ray_cluster  # noqa: E402

from aigc_gateway.runtime.base import Phase, Runtime  # noqa: E402
from aigc_gateway.settings import Settings  # noqa: E402

GOAL_S = 1.5
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


@dataclass
class Samples:
    """One runtime's timings, in seconds, of the counted rounds."""

    started: list[float] = field(default_factory=list)
    """``start`` returned (the engine launched)."""
    ready: list[float] = field(default_factory=list)
    """``start`` + ``wait_ready`` returned READY: the figure."""
    stopped: list[float] = field(default_factory=list)
    """``stop`` + ``forget``."""


async def one_start(
    rt: Runtime, root: Path, flags: tuple[str, ...], prefix: str
) -> tuple[float, ...]:
    """Start a fresh instance, wait until it is ready, stop and forget it: the three times."""
    instance = f"{prefix}{uuid.uuid4().hex[:12]}"
    began = time.perf_counter()
    await rt.start(spec(root, *flags, instance_id=instance))
    started = time.perf_counter()
    ready = await rt.wait_ready(instance, timeout=READY_TIMEOUT_S)
    readied = time.perf_counter()
    if ready.phase is not Phase.READY:
        raise RuntimeError(f"{prefix} engine {instance}: {ready.phase}: {ready.log_tail[-2000:]}")
    await rt.stop(instance, grace=STOP_GRACE_S)
    await rt.forget(instance)
    return started - began, readied - began, time.perf_counter() - readied


async def stop_all(rt: Runtime) -> None:
    """Stop whatever this runtime still runs (a round that failed half-way), then close it."""
    try:
        for w in await rt.list():
            if w.phase.alive or w.phase is Phase.EXITED:
                await rt.stop(w.instance_id, grace=0.5)
    finally:
        await rt.close()


async def measure(
    cluster: RayCluster, root: Path, n: int, warmup: int, uds: bool
) -> tuple[dict[str, Samples], float]:
    from aigc_gateway.runtime.plugins import local
    from aigc_gateway.runtime.ray import make_runtime

    # The same settings but for the runtime: no sandbox (the nodes run engines unsandboxed too).
    local_rt = local(Settings(dev=True, sandbox="off", data_dir=root / "local", runtime="local"))
    ray_rt = make_runtime(
        Settings(
            dev=True,
            sandbox="off",
            data_dir=root / "ray",
            runtime="ray",
            ray_address=cluster.address,
            ray_namespace=f"bench-start-{uuid.uuid4().hex[:8]}",
            ray_node_dir=cluster.node_dir,
        )
    )
    runtimes: dict[str, Runtime] = {"local": local_rt, "ray": ray_rt}
    flags = ("--uds", "{socket}") if uds else ()
    samples = {name: Samples() for name in runtimes}
    first_ray = 0.0
    try:
        for i in range(warmup + n):
            order = list(runtimes) if i % 2 == 0 else list(reversed(runtimes))
            ready: dict[str, float] = {}
            for name in order:
                times = await one_start(runtimes[name], root, flags, name[0])
                ready[name] = times[1]
                if i >= warmup:
                    for kept, value in zip(
                        (samples[name].started, samples[name].ready, samples[name].stopped),
                        times,
                        strict=True,
                    ):
                        kept.append(value)
            if i == 0:
                first_ray = ready["ray"]
            counted = "warm-up" if i < warmup else f"{i - warmup + 1}/{n}"
            print(
                f"round {counted:>7}: ready in local {ready['local']:6.3f} s, "
                f"ray {ready['ray']:6.3f} s",
                flush=True,
            )
    finally:
        await stop_all(ray_rt)
        await stop_all(local_rt)
    return samples, first_ray


def p50(values: list[float]) -> float:
    return statistics.median(values)


def ray_processes_of(address: str, wait_s: float = 10.0) -> list[int]:
    """The Ray processes (raylets, workers, agents) of the cluster at ``address`` that are still
    running ``wait_s`` after its shutdown (none, unless something went wrong)."""
    needle = f"--gcs-address={address}"
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if needle in (proc.info.get("cmdline") or []):
                found.append(proc.info["pid"])
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="counted starts on each runtime")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--uds", action="store_true", help="engines on Unix sockets (the relay)")
    args = parser.parse_args()
    # A SIGTERM ends the run as Ctrl-C does, through the clean-ups (engines, then the cluster).
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    root = Path(tempfile.mkdtemp(prefix="bench-rs-", dir="/tmp"))
    began = time.perf_counter()
    address = ""
    try:
        with ray_cluster() as cluster:
            address = cluster.address
            up = time.perf_counter() - began
            print(f"cluster of {len(cluster.nodes) + 1} nodes up in {up:.1f} s ({address})")
            samples, first_ray = asyncio.run(measure(cluster, root, args.n, args.warmup, args.uds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        left = ray_processes_of(address) if address else []
        if left:
            print(f"WARNING: Ray processes of the cluster left running: {left}", file=sys.stderr)

    loc, ray = samples["local"], samples["ray"]
    overhead = p50(ray.ready) - p50(loc.ready)
    print(
        f"{'runtime':<8} {'start p50':>10} {'ready p50':>10} {'ready min':>10} "
        f"{'ready max':>10} {'stop p50':>9}"
    )
    for name, s in samples.items():
        print(
            f"{name:<8} {p50(s.started):10.3f} {p50(s.ready):10.3f} {min(s.ready):10.3f} "
            f"{max(s.ready):10.3f} {p50(s.stopped):9.3f}"
        )
    verdict = "met" if overhead <= GOAL_S else "MISSED"
    print(f"overhead (ray - local, ready p50): {overhead:.3f} s; goal <= {GOAL_S} s: {verdict}")
    figures = {
        "ray_start_overhead_s_p50": round(overhead, 3),
        "ray_start_s_p50": round(p50(ray.ready), 3),
        "local_start_s_p50": round(p50(loc.ready), 3),
        "ray_start_s_max": round(max(ray.ready), 3),
        "local_start_s_max": round(max(loc.ready), 3),
        "ray_start_call_s_p50": round(p50(ray.started), 3),
        "local_start_call_s_p50": round(p50(loc.started), 3),
        "ray_stop_s_p50": round(p50(ray.stopped), 3),
        "local_stop_s_p50": round(p50(loc.stopped), 3),
        "ray_first_start_s": round(first_ray, 3) if args.warmup else None,
        "n": args.n,
        "endpoint": "unix" if args.uds else "tcp",
        "ray_processes_left": len(left),
        "goal_s": GOAL_S,
        "goal_met": overhead <= GOAL_S,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
