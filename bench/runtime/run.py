"""How fast the local runtime gives up and stops, and how fast the test OIDC provider starts.

These were wall-clock upper bounds inside tests (tests/runtime/test_local.py,
tests/test_oidc_provider_fixture.py); the tests keep the behaviour (the time-out is waited, the
grace is given, a stop does not wait for it) and the speed goals live here:

- readiness time-out of 0.5 s: reported within 2 s of the call;
- engine ignoring SIGTERM, grace 0.3 s: stopped (SIGKILL) within 3 s;
- engine obeying SIGTERM, grace 30 s: stopped within 2 s;
- OIDC provider (tests/oidc, Node.js): ready within 5 s.

Run: ``python bench/runtime/run.py [--rounds N]``. The last line printed is one JSON object;
the exit status is 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.runtime.test_local import spec  # noqa: E402
from tests.support.oidc import oidc_provider, provider_available  # noqa: E402

from aigc_gateway.runtime.base import ReadinessTimeout  # noqa: E402
from aigc_gateway.runtime.local import LocalRuntime  # noqa: E402

GOALS_S = {
    "readiness_timeout_0_5_s": 2.0,
    "stop_ignoring_sigterm_grace_0_3_s": 3.0,
    "stop_obeying_sigterm_grace_30_s": 2.0,
    "oidc_provider_start": 5.0,
}


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    began = time.monotonic()
    await action()
    return time.monotonic() - began


async def readiness_timeout(rt: LocalRuntime, tmp: Path, n: int) -> float:
    await rt.start(spec(tmp, "--never-ready", instance_id=f"r{n}"))

    async def wait() -> None:
        try:
            await rt.wait_ready(f"r{n}", timeout=0.5)
        except ReadinessTimeout:
            return
        raise AssertionError("an engine that is never ready became ready")

    try:
        return await _timed(wait)
    finally:
        await rt.stop(f"r{n}", grace=0.5)


async def stop(rt: LocalRuntime, tmp: Path, n: int, *flags: str, grace: float) -> float:
    instance = f"s{n}{'i' if flags else 'o'}"
    await rt.start(spec(tmp, *flags, instance_id=instance))
    await rt.wait_ready(instance, timeout=30)
    return await _timed(lambda: rt.stop(instance, grace=grace))


def oidc_start() -> float:
    began = time.monotonic()
    client = {
        "client_id": "bench",
        "client_secret": "bench-secret-" + "x" * 24,
        "redirect_uris": ["http://127.0.0.1:9/cb"],
    }
    with oidc_provider(clients=[client], users=[]):
        return time.monotonic() - began


async def measure(rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in GOALS_S}
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        rt = LocalRuntime(state_dir=Path(tmp) / "state")
        try:
            for n in range(rounds):
                samples["readiness_timeout_0_5_s"].append(await readiness_timeout(rt, Path(tmp), n))
                samples["stop_ignoring_sigterm_grace_0_3_s"].append(
                    await stop(rt, Path(tmp), n, "--ignore-term", grace=0.3)
                )
                samples["stop_obeying_sigterm_grace_30_s"].append(
                    await stop(rt, Path(tmp), n, grace=30)
                )
        finally:
            await rt.close()
    if provider_available():
        samples["oidc_provider_start"] = [oidc_start() for _ in range(rounds)]
    else:
        print("OIDC provider not installed (npm ci --prefix tests/oidc): not measured")
        del samples["oidc_provider_start"]
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples = asyncio.run(measure(args.rounds))
    figures: dict[str, object] = {"rounds": args.rounds}
    missed = []
    print(f"{'measure':36} {'median s':>9} {'max s':>7} {'goal s':>7}")
    for name, values in samples.items():
        worst = max(values)
        print(f"{name:36} {statistics.median(values):9.3f} {worst:7.3f} {GOALS_S[name]:7.1f}")
        figures[f"{name}_median_s"] = round(statistics.median(values), 3)
        figures[f"{name}_max_s"] = round(worst, 3)
        if worst >= GOALS_S[name]:
            missed.append(name)
    figures["goals_missed"] = missed
    print(json.dumps(figures))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
