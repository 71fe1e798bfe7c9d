"""The GPU inventory comes from the runtime (``Runtime.gpus()``), and the node the scheduler
placed on reaches the runtime in the grant: a runtime reporting cards on two nodes, the admin's
declaration annotating one, an engine placed and started there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigc_gateway.gateway import Gateway, open_gateway
from aigc_gateway.lifecycle.service import CreateRequest
from aigc_gateway.runtime.base import GpuDevice, GpuDiscovery, LaunchSpec, Workload
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.settings import Settings
from tests.support.faketime import FakeTime
from tests.support.gateway import make_settings, stop_engines_async
from tests.test_controller_errors import alice, settled


class TwoNodes(LocalRuntime):
    """The local runtime, reporting the cards of two nodes and keeping the grants it gets."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.specs: list[LaunchSpec] = []

    async def gpus(self) -> GpuDiscovery:
        return GpuDiscovery(
            (
                GpuDevice("GPU-a0", "node-a", 0, "NVIDIA GeForce RTX 3060", 12.0),
                GpuDevice("GPU-b0", "node-b", 0, "NVIDIA GeForce RTX 4090", 24.0),
            ),
            "2 GPU(s) on 2 nodes",
        )

    async def start(self, spec: LaunchSpec) -> Workload:
        self.specs.append(spec)
        return await super().start(spec)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings: Settings = make_settings(
        tmp_path, watch_templates=False, gpus=[{"id": "GPU-b0", "pool": "lab"}]
    )
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    runtime = TwoNodes(state_dir=settings.runtime_dir)
    opened = await open_gateway(settings, runtime=runtime, sleep=FakeTime({"instance-": 5}).sleep)
    await opened.controller.start()
    try:
        yield opened
    finally:
        await opened.close()
        await stop_engines_async(settings)


async def test_the_inventory_is_what_the_runtime_reports(gw: Gateway) -> None:
    cards = {g.id: g for g in gw.gpus.inventory.gpus}
    assert set(cards) == {"GPU-a0", "GPU-b0"}
    assert (cards["GPU-a0"].host, cards["GPU-a0"].type) == ("node-a", "rtx3060")
    assert (cards["GPU-b0"].host, cards["GPU-b0"].pool) == ("node-b", "lab")  # annotated
    assert gw.gpus.note == "2 GPU(s): 2 found by the runtime"


async def test_the_grant_names_the_node_the_scheduler_placed_on(gw: Gateway) -> None:
    inst, _ = await gw.instances.create(await alice(gw), CreateRequest("tiny-gpu"))  # rtx4090
    assert await settled(gw, inst.id, "running", "failed") == "running"
    runtime = gw.runtime
    assert isinstance(runtime, TwoNodes)
    [spec] = runtime.specs
    assert spec.gpu is not None
    assert (spec.gpu.node, spec.gpu.devices) == ("node-b", ("GPU-b0",))
