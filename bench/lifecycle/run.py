"""bench/lifecycle: the gateway's own cost of starting an engine.

Runs the real gateway (`aigc-gateway serve`, SQLite, local runtime) as its own process and a tiny
engine (tests/engines/tiny.py), and measures over N starts (pause → resume cycles):

- spawn overhead: API request sent → engine process spawned (the runtime's spawn time, recorded
  in the start's progress event);
- readiness detection delay: engine's port open (the engine's own timestamp) → instance
  reported running (the "running" transition).

Baseline in the same run: the same engine command spawned directly with subprocess.Popen
(what any launcher pays), and the same readiness probed by a bare loop at the gateway's interval.
Goals (issue 2): overhead ≤ 50 ms, detection ≤ 100 ms. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.gateway import Api, add_user, stop_engines_async, write_templates  # noqa: E402
from tests.support.process import gateway_process  # noqa: E402
from tests.support.server import bound_socket  # noqa: E402

from aigc_gateway.settings import Settings  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def at(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["at"])).timestamp()


async def measure_gateway(api: Api, volumes: Path, starts: int) -> tuple[list[float], list[float]]:
    inst = await api.wait_state((await api.create("tiny"))["id"], "running")
    spawn, detect, answered = [], [], []
    listen_file = next(volumes.glob("*/tiny")) / "listen.json"
    for _ in range(starts):
        await api.act(inst["id"], "pause")
        await api.wait_state(inst["id"], "paused")
        after = await api.last_event_id(inst["id"])
        # Like a dashboard, follow the event stream first, then press resume.
        async with api.client.stream(
            "GET",
            f"/api/instances/{inst['id']}/events/stream",
            params={"after": after},
            timeout=None,
        ) as stream:
            t0 = time.time()
            await api.act(inst["id"], "resume")
            answered.append((time.time() - t0) * 1000)
            spawned = running = None
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event["kind"] == "progress" and "spawned_at" in event["data"]:
                        spawned = event
                    if event["kind"] == "transition" and event["to"] == "running":
                        running = event
                        break
        assert spawned is not None and running is not None
        listened = json.loads(listen_file.read_text())
        spawn.append((spawned["data"]["spawned_at"] - t0) * 1000)
        detect.append((at(running) - listened["t"]) * 1000)
    print(
        f"resume request answered: p50 {pct(answered, 0.5):.2f} ms, p95 {pct(answered, 0.95):.2f} ms"
    )
    return spawn, detect


def measure_baseline(data: Path, starts: int) -> tuple[list[float], list[float]]:
    """Bare Popen of the same engine, and a bare readiness loop at the same 10 ms interval."""
    spawn, detect = [], []
    data.mkdir(parents=True, exist_ok=True)
    listening = data / "listen.json"
    for _ in range(starts):
        listening.unlink(missing_ok=True)
        t0 = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests/engines/tiny.py"),
                "--data-dir",
                str(data),
                "--port",
                "0",  # it binds a free one and writes it in listen.json
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        spawn.append((time.time() - t0) * 1000)
        while not listening.exists() or not listening.read_text():
            time.sleep(0.01)  # the same 10 ms polling as the gateway's readiness loop
        port = json.loads(listening.read_text())["port"]
        with httpx.Client() as client:
            while True:
                try:
                    client.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.01)
        seen = time.time()
        detect.append((seen - json.loads(listening.read_text())["t"]) * 1000)
        proc.terminate()
        proc.wait()
    return spawn, detect


async def measure_sandbox(root: Path, starts: int) -> tuple[list[float], list[float]] | None:
    """Runtime start → the engine listening (its own timestamp), sandboxed and bare, alternated
    in the same run; None where this host cannot sandbox."""
    from aigc_gateway.runtime.base import LaunchSpec, ReadinessCheck
    from aigc_gateway.runtime.local import LocalRuntime
    from aigc_gateway.runtime.sandbox.detect import probe

    if probe().missing():
        return None
    from tests.support.sandbox import sandboxed_runtime

    tiny = str(REPO / "tests" / "engines" / "tiny.py")
    runtimes = {
        "sandboxed": sandboxed_runtime(root / "sandboxed"),
        "bare": LocalRuntime(state_dir=root / "bare"),
    }
    times: dict[str, list[float]] = {"sandboxed": [], "bare": []}
    for n in range(starts + 2):
        for kind, rt in runtimes.items():
            volume = root / "volumes" / kind
            spec = LaunchSpec(
                instance_id=f"{kind}-{n}",
                command=(sys.executable, tiny, "--data-dir", "{data_dir}"),
                data_dir=str(volume),
                readiness=ReadinessCheck(path="/"),
                labels={"owner": "bench"},
            )
            (volume / "listen.json").unlink(missing_ok=True)
            t0 = time.time()
            await rt.start(spec)
            await rt.wait_ready(spec.instance_id, timeout=30)
            listened = json.loads((volume / "listen.json").read_text())["t"]
            if n >= 2:  # warm-up
                times[kind].append((listened - t0) * 1000)
            await rt.stop(spec.instance_id, grace=2)
            await rt.forget(spec.instance_id)
    for rt in runtimes.values():
        await rt.close()
    return times["sandboxed"], times["bare"]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
        root = Path(tmp)
        data, templates = root / "data", write_templates(root / "templates")
        settings = Settings(dev=True, data_dir=data, templates_dir=templates)
        token = await add_user(settings, "bench")
        listener = bound_socket()
        port = listener.getsockname()[1]
        try:
            # The default resync period, as in production (the tests' helper uses a short one).
            with gateway_process(data, templates, listener, AIGC_RECONCILE_INTERVAL_S="5"):
                api = Api(f"http://127.0.0.1:{port}", token)
                try:
                    spawn, detect = await measure_gateway(api, settings.volumes_dir, args.starts)
                finally:
                    await api.aclose()
        finally:
            listener.close()
            await stop_engines_async(settings)
        base_spawn, base_detect = measure_baseline(root / "baseline", args.starts)
        sandbox = await measure_sandbox(root / "sandbox", min(args.starts, 30))

    figures = {
        "spawn_overhead_ms_p50": round(pct(spawn, 0.5), 2),
        "spawn_overhead_ms_p95": round(pct(spawn, 0.95), 2),
        "ready_detect_ms_p50": round(pct(detect, 0.5), 2),
        "ready_detect_ms_p95": round(pct(detect, 0.95), 2),
        "baseline_popen_ms_p50": round(pct(base_spawn, 0.5), 2),
        "baseline_detect_ms_p50": round(pct(base_detect, 0.5), 2),
        "starts": args.starts,
    }
    if sandbox is not None:
        boxed, bare = sandbox
        figures["sandboxed_start_ms_p50"] = round(pct(boxed, 0.5), 2)
        figures["bare_start_ms_p50"] = round(pct(bare, 0.5), 2)
        figures["sandbox_overhead_ms_p50"] = round(pct(boxed, 0.5) - pct(bare, 0.5), 2)
    print(f"{'measure':34} {'p50 ms':>8} {'p95 ms':>8} {'mean':>8}")
    for name, values in [
        ("gateway: request → spawned", spawn),
        ("baseline: bare Popen", base_spawn),
        ("gateway: port open → running", detect),
        ("baseline: bare 10 ms probe loop", base_detect),
    ]:
        print(
            f"{name:34} {pct(values, 0.5):8.2f} {pct(values, 0.95):8.2f} {statistics.mean(values):8.2f}"
        )
    print(
        f"goals: spawn overhead p95 ≤ 50 ms: {figures['spawn_overhead_ms_p95'] <= 50}; "
        f"detection p95 ≤ 100 ms: {figures['ready_detect_ms_p95'] <= 100}"
    )
    if sandbox is not None:
        print(
            f"sandbox: start → listening p50 {figures['sandboxed_start_ms_p50']} ms sandboxed, "
            f"{figures['bare_start_ms_p50']} ms bare; overhead p50 "
            f"{figures['sandbox_overhead_ms_p50']} ms (goal ≤ 80): "
            f"{figures['sandbox_overhead_ms_p50'] <= 80}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
