"""The contract every runtime passes (:mod:`aigc_gateway.runtime.base`'s docstring), as tests.

A runtime's test module imports these tests and provides a ``harness`` fixture
(:class:`Harness`): the runtime under test, how to open a second runtime object on the same
state (a restarted gateway), how to build a launch spec for the test engine
(``tests/runtime/engines/engine.py``, whose flags pick its behaviour), and how to tell that a
process of the engine is gone. Everything else goes through the runtime's own interface and
the workload's endpoint, so a remote runtime passes the same tests::

    from tests.runtime.contract import *  # noqa: F403 - the contract's tests

    @pytest.fixture
    async def harness(...) -> AsyncIterator[Harness]: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from aigc_gateway.runtime.base import (
    GpuDiscovery,
    GpuGrant,
    LaunchSpec,
    NotSupported,
    Phase,
    ReadinessTimeout,
    Runtime,
    Workload,
)
from aigc_gateway.runtime.connect import base_url, httpx_transport
from aigc_gateway.runtime.volumes import Volumes

__all__ = [
    "Harness",
    "test_a_gpu_grant_is_what_the_engine_sees",
    "test_a_gpu_share_carries_its_memory_limit",
    "test_a_restarted_gateway_sees_the_same_workloads",
    "test_a_volume_holds_what_the_engine_writes_until_deleted",
    "test_an_engine_that_exits_reports_its_code_and_output",
    "test_an_engine_that_never_answers_times_out_with_its_output",
    "test_an_unknown_instance_is_absent",
    "test_logs_are_the_end_of_the_engine_output",
    "test_no_grant_hides_every_card",
    "test_start_is_idempotent_and_the_endpoint_reaches_the_engine",
    "test_stop_is_polite_first",
    "test_stop_kills_the_whole_tree_after_the_grace",
    "test_the_runtime_reports_the_gpus_it_can_place_on",
    "test_when_the_engine_ended_survives_a_restart",
]


@dataclass(frozen=True, slots=True)
class Harness:
    runtime: Runtime
    reopen: Callable[[], Awaitable[Runtime]]
    """A second runtime object over the same state, as a restarted gateway builds it."""
    spec: Callable[..., LaunchSpec]
    """``spec(*engine_flags, instance_id="i1", **LaunchSpec_changes)``."""
    gone: Callable[[int], bool]
    """Whether an engine process (a pid the engine reported) no longer runs."""
    gpu_node: str = "local"
    """A node with two cards, as the runtime names nodes (:attr:`GpuGrant.node`)."""


async def get(work: Workload, path: str, timeout: float = 5.0) -> httpx.Response:
    """``GET path`` on the engine, through its endpoint."""
    assert work.endpoint is not None
    transport = httpx_transport(work.endpoint)
    async with httpx.AsyncClient(
        transport=transport, base_url=base_url(work.endpoint), timeout=timeout, trust_env=False
    ) as client:
        return await client.get(path)


async def reachable(work: Workload) -> bool:
    try:
        await get(work, "/health", timeout=1.0)
    except httpx.TransportError:
        return False
    return True


async def info(work: Workload) -> dict[str, Any]:
    found: dict[str, Any] = (await get(work, "/info")).json()
    return found


async def until_gone(harness: Harness, pid: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not harness.gone(pid):
            await asyncio.sleep(0.005)


async def test_an_unknown_instance_is_absent(harness: Harness) -> None:
    rt = harness.runtime
    assert isinstance(rt, Runtime)
    assert (await rt.observe("nope")).phase is Phase.ABSENT
    assert (await rt.stop("nope", grace=1)).phase is Phase.ABSENT
    assert (await rt.wait_ready("nope", timeout=1)).phase is Phase.ABSENT
    assert await rt.logs("nope") == ""
    assert await rt.list() == []
    await rt.forget("nope")


async def test_start_is_idempotent_and_the_endpoint_reaches_the_engine(harness: Harness) -> None:
    rt = harness.runtime
    started = await rt.start(harness.spec(labels={"owner": "alice"}))
    assert started.phase is Phase.STARTING and started.endpoint is not None
    again = await rt.start(harness.spec())
    assert (again.pid, again.endpoint) == (started.pid, started.endpoint)
    ready = await rt.wait_ready("i1", timeout=15)
    assert ready.phase is Phase.READY and ready.endpoint == started.endpoint
    assert ready.labels == {"owner": "alice"}
    assert (await get(ready, "/")).text == "engine i1 ok\n"
    third = await rt.start(harness.spec())
    assert (third.pid, third.phase) == (started.pid, Phase.READY)
    assert [w.instance_id for w in await rt.list()] == ["i1"]
    stopped = await rt.stop("i1", grace=5)
    assert stopped.phase is Phase.ABSENT
    assert not await reachable(ready)
    assert (await rt.stop("i1", grace=5)).exited_at == stopped.exited_at


async def test_an_engine_that_exits_reports_its_code_and_output(harness: Harness) -> None:
    rt = harness.runtime
    before = time.time()
    await rt.start(harness.spec("--exit-code", "3"))
    exited = await rt.wait_ready("i1", timeout=15)
    assert (exited.phase, exited.exit_code) == (Phase.EXITED, 3)
    assert "boom: the engine cannot start" in exited.log_tail
    assert exited.exited_at is not None and exited.exited_at >= before - 1
    assert (await rt.observe("i1")).exit_code == 3
    assert (await rt.stop("i1", grace=1)).phase is Phase.ABSENT


async def test_an_engine_that_never_answers_times_out_with_its_output(harness: Harness) -> None:
    rt = harness.runtime
    await rt.start(harness.spec("--never-ready"))
    with pytest.raises(ReadinessTimeout) as timeout:
        await rt.wait_ready("i1", timeout=0.5)
    assert "starting" in timeout.value.tail
    assert (await rt.observe("i1")).phase is Phase.STARTING
    assert (await rt.stop("i1", grace=1)).phase is Phase.ABSENT


async def test_stop_is_polite_first(harness: Harness) -> None:
    """An engine that takes a moment to shut down after ``SIGTERM`` is given that moment."""
    rt = harness.runtime
    await rt.start(harness.spec("--slow-stop", "0.3"))
    ready = await rt.wait_ready("i1", timeout=15)
    engine = (await info(ready))["pid"]
    began = time.monotonic()
    stopped = await rt.stop("i1", grace=10)
    assert time.monotonic() - began >= 0.3
    assert stopped.phase is Phase.ABSENT and stopped.exited_at is not None
    assert harness.gone(engine)
    assert "engine stopped politely" in await rt.logs("i1")  # not killed


async def test_stop_kills_the_whole_tree_after_the_grace(harness: Harness) -> None:
    """An engine that ignores ``SIGTERM`` is killed after the grace, with what it started."""
    rt = harness.runtime
    await rt.start(harness.spec("--ignore-term", "--grandchild"))
    ready = await rt.wait_ready("i1", timeout=15)
    seen = await info(ready)
    began = time.monotonic()
    assert (await rt.stop("i1", grace=0.3)).phase is Phase.ABSENT
    assert time.monotonic() - began >= 0.3
    await until_gone(harness, seen["pid"])
    await until_gone(harness, seen["grandchild"])
    assert not await reachable(ready)


async def test_a_restarted_gateway_sees_the_same_workloads(harness: Harness) -> None:
    rt = harness.runtime
    started = await rt.start(harness.spec(labels={"owner": "alice"}))
    await rt.wait_ready("i1", timeout=15)
    await rt.start(harness.spec("--exit-code", "4", instance_id="i2"))
    assert (await rt.wait_ready("i2", timeout=15)).phase is Phase.EXITED
    adopter = await harness.reopen()
    try:
        by_id = {w.instance_id: w for w in await adopter.list()}
        assert set(by_id) == {"i1", "i2"}
        assert (by_id["i1"].phase, by_id["i1"].pid) == (Phase.READY, started.pid)
        assert by_id["i1"].endpoint == started.endpoint
        assert by_id["i1"].labels == {"owner": "alice"}
        assert (by_id["i2"].phase, by_id["i2"].exit_code) == (Phase.EXITED, 4)
        assert (await get(by_id["i1"], "/")).status_code == 200
        assert (await adopter.wait_ready("i1", timeout=1)).phase is Phase.READY
        assert (await adopter.start(harness.spec())).pid == started.pid
        assert (await adopter.stop("i1", grace=5)).phase is Phase.ABSENT
        assert (await rt.observe("i1")).phase is Phase.ABSENT
    finally:
        await adopter.close()


async def test_when_the_engine_ended_survives_a_restart(harness: Harness) -> None:
    rt = harness.runtime
    await rt.start(harness.spec())
    await rt.wait_ready("i1", timeout=15)
    stopped = await rt.stop("i1", grace=5)
    assert stopped.exited_at is not None
    adopter = await harness.reopen()
    try:
        assert (await adopter.observe("i1")).exited_at == stopped.exited_at
        [listed] = await adopter.list()
        assert listed.exited_at == stopped.exited_at
        await adopter.forget("i1")
        assert await adopter.list() == []
    finally:
        await adopter.close()


async def test_logs_are_the_end_of_the_engine_output(harness: Harness) -> None:
    rt = harness.runtime
    await rt.start(harness.spec("--spew", "50"))
    await rt.wait_ready("i1", timeout=15)
    logs = await rt.logs("i1")
    assert "early line 000000" in logs and "early spew done" in logs
    assert "listening on" in logs
    assert len((await rt.logs("i1", lines=1)).strip().splitlines()) == 1
    assert len(await rt.logs("i1", tail_bytes=200)) <= 200
    await rt.stop("i1", grace=5)
    assert "listening on" in await rt.logs("i1")  # kept after the stop


async def test_a_gpu_grant_is_what_the_engine_sees(harness: Harness) -> None:
    rt = harness.runtime
    grant = GpuGrant(devices=("GPU-1111", "GPU-2222"), node=harness.gpu_node)
    await rt.start(harness.spec(gpu=grant))
    env = (await get(await rt.wait_ready("i1", timeout=15), "/env")).json()
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1111,GPU-2222"
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in env
    await rt.stop("i1", grace=5)


async def test_no_grant_hides_every_card(harness: Harness) -> None:
    rt = harness.runtime
    await rt.start(harness.spec())
    env = (await get(await rt.wait_ready("i1", timeout=15), "/env")).json()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    await rt.stop("i1", grace=5)


async def test_a_gpu_share_carries_its_memory_limit(harness: Harness) -> None:
    rt = harness.runtime
    await rt.start(harness.spec(gpu=GpuGrant(devices=("GPU-3333",), memory_mib=2048)))
    env = (await get(await rt.wait_ready("i1", timeout=15), "/env")).json()
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-3333"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M"
    assert env.get("CUDA_MPS_PIPE_DIRECTORY")
    await rt.stop("i1", grace=5)


async def test_the_runtime_reports_the_gpus_it_can_place_on(harness: Harness) -> None:
    found = await harness.runtime.gpus()
    assert isinstance(found, GpuDiscovery) and found.note
    for card in found.devices:
        assert card.id and card.node and card.memory_gib > 0


async def test_a_volume_holds_what_the_engine_writes_until_deleted(harness: Harness) -> None:
    volumes = harness.runtime.volumes
    assert isinstance(volumes, Volumes)
    assert await volumes.size("u1", "demo") == 0  # absent: nothing
    data_dir = await volumes.create("u1", "demo")
    assert data_dir == volumes.mount("u1", "demo") == await volumes.create("u1", "demo")
    assert volumes.mount("u2", "demo") != data_dir
    await harness.runtime.start(harness.spec(data_dir=data_dir))
    await harness.runtime.wait_ready("i1", timeout=15)  # it wrote engine.json there
    await harness.runtime.stop("i1", grace=5)
    written = await volumes.size("u1", "demo")
    assert written > 0
    assert await volumes.size("u2", "demo") == 0
    with contextlib.suppress(NotSupported):  # for later: a runtime that cannot says so
        await volumes.snapshot("u1", "demo", "before-upgrade")
    await volumes.delete("u1", "demo")
    assert await volumes.size("u1", "demo") == 0
    await volumes.delete("u1", "demo")  # absent: not an error


def dump(work: Workload) -> str:
    """For assertion messages."""
    return json.dumps({"phase": str(work.phase), "message": work.message, "tail": work.log_tail})
