"""The runtime contract (tests/runtime/contract.py), run against the Ray runtime on a real
cluster of four nodes on this machine (tests/support/ray_cluster.py): once with engines on
loopback TCP ports, once with engines on Unix sockets of their own. Each test has a namespace
of its own, so it sees only its own engines."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from tests.runtime.contract import *  # noqa: F403 - the contract's tests
from tests.runtime.contract import Harness
from tests.support.fake_mps import install_fake_mps
from tests.support.ray_cluster import RayCluster, ray_cluster

from aigc_gateway.runtime.base import LaunchSpec, Phase, ReadinessCheck, Runtime

ENGINE = str(Path(__file__).parent / "engines" / "engine.py")

pytestmark = pytest.mark.needs("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster() as found:
        yield found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(params=["tcp", "unix"])
async def harness(request: pytest.FixtureRequest, cluster: RayCluster) -> AsyncIterator[Harness]:
    from aigc_gateway.runtime.ray.node import NodeConfig
    from aigc_gateway.runtime.ray.runtime import RayRuntime

    root = Path(tempfile.mkdtemp(prefix="rrt-", dir="/tmp"))
    program, _ = install_fake_mps(root / "mps-bin")
    namespace = f"contract-{uuid.uuid4().hex[:8]}"
    config = NodeConfig(node_dir=cluster.node_dir, sandbox="off", mps_control=str(program))

    def make() -> RayRuntime:
        return RayRuntime(config=config, namespace=namespace, schedule_timeout_s=20)

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
        yield Harness(
            runtime=runtime,
            reopen=reopen,
            spec=spec,
            gone=gone,
            gpu_node=cluster.nodes["onprem-a"],
        )
    finally:
        for w in await runtime.list():
            if w.phase.alive or w.phase is Phase.EXITED:
                await runtime.stop(w.instance_id, grace=0.5)
        await runtime.close()
        shutil.rmtree(root, ignore_errors=True)
