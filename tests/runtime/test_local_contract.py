"""The runtime contract (tests/runtime/contract.py), run against the local runtime: once with
engines on loopback TCP ports, once with engines on Unix sockets of their own."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from tests.runtime.contract import *  # noqa: F403 - the contract's tests
from tests.runtime.contract import Harness
from tests.support.fake_mps import install_fake_mps

from aigc_gateway.runtime.base import LaunchSpec, Phase, ReadinessCheck, Runtime
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.runtime.mps import MpsControl, mps_root_for
from aigc_gateway.runtime.volumes import LocalVolumes

ENGINE = str(Path(__file__).parent / "engines" / "engine.py")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(params=["tcp", "unix"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    # Short: a Unix socket's path (under the state folder) is at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    state = root / "state"
    program, _ = install_fake_mps(root / "mps-bin")

    def make() -> LocalRuntime:
        mps = MpsControl(mps_root_for(state), command=str(program))
        return LocalRuntime(state_dir=state, mps=mps, volumes=LocalVolumes(root / "volumes"))

    async def reopen() -> Runtime:
        return make()

    unix = ("--uds", "{socket}") if request.param == "unix" else ()

    def spec(*flags: str, instance_id: str = "i1", **changes: object) -> LaunchSpec:
        base = LaunchSpec(
            instance_id=instance_id,
            command=(sys.executable, ENGINE, "--data-dir", "{data_dir}", *unix, *flags),
            data_dir=str(root / "data" / "{instance_id}"),
            env={"ENGINE_ID": "{instance_id}"},
            readiness=ReadinessCheck(path="/health"),
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    runtime = make()
    try:
        yield Harness(runtime=runtime, reopen=reopen, spec=spec, gone=gone)
    finally:
        for w in await runtime.list():
            if w.phase.alive or w.phase is Phase.EXITED:
                await runtime.stop(w.instance_id, grace=0.5)
        await runtime.close()
        shutil.rmtree(root, ignore_errors=True)
