"""The Ray runtime on a real cluster of four nodes on this machine (tests/support/ray_cluster.py):
where engines are placed, what a placement no node can take does, a restarted gateway and a
lost supervisor re-adopting engines, and the cards the cluster reports."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
import pytest

from aigc_gateway.gpu.inventory import from_runtime
from aigc_gateway.runtime.base import (
    Endpoint,
    GpuGrant,
    LaunchError,
    LaunchSpec,
    Phase,
    ReadinessCheck,
)
from aigc_gateway.runtime.connect import base_url, httpx_transport
from aigc_gateway.runtime.relay import RelayKey
from tests.runtime.contract import get, info, reachable
from tests.support.ray_cluster import NODES, RayCluster, ray_cluster

pytestmark = pytest.mark.needs("ray")

TEST_UIDS = "231000-231999"
"""Sandboxed engines' uids: the tests' own corner of the default range (tests/support/sandbox.py)."""

ENGINE = str(Path(__file__).parent / "runtime" / "engines" / "engine.py")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster() as found:
        yield found


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path


Make = Callable[..., Any]


@pytest.fixture
async def make(cluster: RayCluster) -> AsyncIterator[Callable[..., object]]:
    """``make(schedule_timeout_s=..., relay_key=..., sandbox=...)``: a runtime in this test's own namespace (each call a new
    object over the same cluster state, as a restarted gateway builds it). Every engine still
    running at the end is stopped."""
    from aigc_gateway.runtime.ray.node import NodeConfig
    from aigc_gateway.runtime.ray.runtime import RayRuntime

    namespace = f"cluster-{uuid.uuid4().hex[:8]}"
    made: list[RayRuntime] = []

    def new(
        schedule_timeout_s: float = 20.0,
        relay_key: RelayKey | None = None,
        sandbox: Literal["on", "off"] = "off",
    ) -> RayRuntime:
        runtime = RayRuntime(
            config=NodeConfig(
                node_dir=cluster.node_dir, sandbox=sandbox, sandbox_uid_range=TEST_UIDS
            ),
            namespace=namespace,
            schedule_timeout_s=schedule_timeout_s,
            relay_key=relay_key,
        )
        made.append(runtime)
        return runtime

    try:
        yield new
    finally:
        if made:
            for w in await made[0].list():
                if w.phase.alive or w.phase is Phase.EXITED:
                    await made[0].stop(w.instance_id, grace=0.5)
        for runtime in made:
            await runtime.close()


def spec(instance_id: str, root: Path, *flags: str, **changes: object) -> LaunchSpec:
    base = LaunchSpec(
        instance_id=instance_id,
        command=(sys.executable, ENGINE, "--data-dir", "{data_dir}", "--uds", "{socket}", *flags),
        data_dir=str(root / "{instance_id}"),
        env={"ENGINE_ID": "{instance_id}"},
        readiness=ReadinessCheck(path="/health"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def killed(actor: Any) -> None:
    """Kill ``actor`` and return once it is dead: a call on it fails (one made before the kill
    lands still answers)."""
    import ray

    ray.kill(actor, no_restart=True)
    async with asyncio.timeout(20):
        while True:
            try:
                await actor.node.remote()
            except ray.exceptions.RayActorError:
                return


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def engines_on(cluster: RayCluster, name: str) -> set[str]:
    """The instances whose engine records are in node ``name``'s folder."""
    state = cluster.folder(name) / "runtime" / "ray"
    return {p.parent.name for p in state.glob("*/workload.json")}


async def test_an_engine_runs_on_the_node_its_grant_names(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make()
    node = cluster.nodes["cloud"]
    grant = GpuGrant(devices=("GPU-c1",), node=node)
    await rt.start(spec("g1", data, gpu=grant))
    ready = await rt.wait_ready("g1", timeout=15)
    assert ready.phase is Phase.READY
    assert engines_on(cluster, "cloud") == {"g1"}
    assert engines_on(cluster, "onprem-a") == engines_on(cluster, "onprem-b") == set()
    assert ready.endpoint is not None and ready.endpoint.unix_path is not None
    assert (await get(ready, "/env")).json()["CUDA_VISIBLE_DEVICES"] == "GPU-c1"


async def test_a_volume_is_on_the_node_that_runs_the_engine(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make()
    volume = await rt.volumes.create("alice", "demo")
    assert "{node_dir}" in volume  # filled in by the node that runs the engine
    grant = GpuGrant(devices=("GPU-b1",), node=cluster.nodes["onprem-b"])
    await rt.start(spec("v1", data, gpu=grant, data_dir=volume))
    await rt.wait_ready("v1", timeout=15)
    assert (cluster.folder("onprem-b") / "volumes" / "alice" / "demo" / "engine.json").is_file()
    assert not (cluster.folder("onprem-a") / "volumes" / "alice").exists()
    assert await rt.volumes.size("alice", "demo") > 0
    await rt.stop("v1", grace=5)
    await rt.volumes.delete("alice", "demo")
    assert not (cluster.folder("onprem-b") / "volumes" / "alice" / "demo").exists()


async def test_a_multi_gpu_grant_stays_on_one_node_and_holds_its_cards(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make(schedule_timeout_s=3)
    node = cluster.nodes["onprem-b"]
    both = GpuGrant(devices=("GPU-b1", "GPU-b2"), node=node)
    await rt.start(spec("m1", data, gpu=both))
    ready = await rt.wait_ready("m1", timeout=15)
    assert engines_on(cluster, "onprem-b") == {"m1"}
    assert (await get(ready, "/env")).json()["CUDA_VISIBLE_DEVICES"] == "GPU-b1,GPU-b2"
    # The node's two cards are held by m1: another grant of them is not placed...
    with pytest.raises(LaunchError, match="did not place the engine"):
        await rt.start(spec("m2", data, gpu=both))  # after the 3 s this runtime waits
    assert [w.instance_id for w in await rt.list()] == ["m1"]
    # ...until m1's stop gives them back.
    await rt.stop("m1", grace=5)
    await rt.start(spec("m2", data, gpu=both))
    assert (await rt.wait_ready("m2", timeout=15)).phase is Phase.READY
    # More cards than the node has: refused at once, naming the node.
    four = GpuGrant(devices=("a", "b", "c", "d"), node=cluster.nodes["onprem-a"])
    with pytest.raises(LaunchError, match="fewer than the 4 granted"):
        await rt.start(spec("m3", data, gpu=four))


async def test_a_placement_no_node_can_take_is_refused_at_once(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    # Longer than pytest's time-out for a test: a start left pending fails this test, only one
    # refused before it waits for the cluster passes.
    rt = make(schedule_timeout_s=3600)
    with pytest.raises(
        LaunchError, match=r"no engine node of pool 'gpu-farm'.*pools there: cloud, onprem"
    ):
        await rt.start(spec("p1", data, labels={"pool": "gpu-farm"}))
    gone = GpuGrant(devices=("GPU-x",), node="ab" * 28)
    with pytest.raises(LaunchError, match="not in the cluster now"):
        await rt.start(spec("p2", data, gpu=gone))
    assert await rt.list() == []
    assert (await rt.observe("p1")).phase is Phase.ABSENT


async def test_an_engine_without_gpus_goes_to_its_pool(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make()
    await rt.start(spec("c1", data, labels={"pool": "cloud"}))
    ready = await rt.wait_ready("c1", timeout=15)
    assert engines_on(cluster, "cloud") == {"c1"}
    assert (await get(ready, "/env")).json()["CUDA_VISIBLE_DEVICES"] == ""
    assert ready.labels == {"pool": "cloud"}


async def test_a_restarted_gateway_adopts_the_engines_on_every_node(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make()
    started = {}
    for iid, name in (("r1", "onprem-a"), ("r2", "cloud")):
        grant = GpuGrant(devices=("GPU-1",), node=cluster.nodes[name])
        started[iid] = await rt.start(spec(iid, data, gpu=grant, labels={"owner": iid}))
        await rt.wait_ready(iid, timeout=15)
    await rt.close()
    adopter = make()
    by_id = {w.instance_id: w for w in await adopter.list()}
    assert set(by_id) == {"r1", "r2"}
    for iid, first in started.items():
        assert (by_id[iid].phase, by_id[iid].pid) == (Phase.READY, first.pid)
        assert by_id[iid].endpoint == first.endpoint and by_id[iid].labels == {"owner": iid}
        assert (await get(by_id[iid], "/")).text == f"engine {iid} ok\n"
    assert (await adopter.stop("r1", grace=5)).phase is Phase.ABSENT
    assert [w.instance_id for w in await adopter.list() if w.phase.alive] == ["r2"]


async def test_a_lost_supervisor_is_replaced_and_its_engine_stopped(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    """Ray ends a killed actor's child processes, the engine's wrapper among them: the engine's
    end can no longer be recorded. A new supervisor on the same node finds that out from the
    node's files and reports it (EXITED, so the controller stops it), and the stop ends the
    engine that outlived its wrapper."""
    import ray

    from aigc_gateway.runtime.ray.runtime import ACTOR_PREFIX

    rt = make()
    grant = GpuGrant(devices=("GPU-1", "GPU-2"), node=cluster.nodes["onprem-a"])
    await rt.start(spec("s1", data, gpu=grant))
    ready = await rt.wait_ready("s1", timeout=15)
    engine = (await info(ready))["pid"]
    actor = ray.get_actor(ACTOR_PREFIX + "s1", namespace=rt._namespace)
    await killed(actor)
    seen = await rt.observe("s1")  # from a new supervisor on onprem-a
    assert seen.phase is Phase.EXITED, seen
    assert "engine supervisor killed" in seen.message
    assert seen.pid == ready.pid and engines_on(cluster, "onprem-a") == {"s1"}
    stopped = await rt.stop("s1", grace=1)
    assert stopped.phase is Phase.ABSENT and stopped.exited_at is not None
    assert gone(engine)
    assert (await rt.observe("s1")).phase is Phase.ABSENT


async def test_the_cluster_reports_every_node_s_cards_with_its_pool(
    cluster: RayCluster, make: Make
) -> None:
    rt = make()
    found = await rt.gpus()
    by_node: dict[str, list[object]] = {}
    for card in found.devices:
        by_node.setdefault(card.node, []).append(card)
    assert {node: len(cards) for node, cards in by_node.items()} == {
        cluster.nodes[name]: spec["num_gpus"] for name, spec in NODES.items()
    }
    gpus = {g.id: g for g in from_runtime(found)}  # the scheduler's view
    for card in found.devices:
        name = next(n for n, i in cluster.nodes.items() if i == card.node)
        labels = NODES[name]["labels"]
        assert (card.pool, card.model) == (labels["pool"], labels["gpu-type"])
        assert card.memory_gib == float(labels["gpu-memory-gib"])
        placed = gpus[card.id]
        assert (placed.host, placed.pool, placed.pool_rank) == (
            card.node,
            labels["pool"],
            int(labels["pool_rank"]),
        )
    assert "8 GPU(s) on 3 of 4 Ray node(s)" in found.note


async def relayed_get(endpoint: Endpoint, key: RelayKey, path: str) -> httpx.Response:
    transport = httpx_transport(endpoint, relay_key=key)
    async with httpx.AsyncClient(
        transport=transport, base_url=base_url(endpoint), timeout=5, trust_env=False
    ) as client:
        return await client.get(path)


async def reached_again(rt: Any, instance_id: str, key: RelayKey) -> Endpoint:
    """The endpoint a later look gives once it reaches the engine (a relay being restarted
    answers the look before, or after, its restart: the look after it gives the new port)."""
    async with asyncio.timeout(20):
        while True:
            endpoint = (await rt.observe(instance_id)).endpoint
            assert endpoint is not None and endpoint.relay_for == instance_id
            try:
                answer = await relayed_get(endpoint, key, "/")
            except httpx.TransportError:
                continue
            assert answer.text == f"engine {instance_id} ok\n"
            return endpoint


async def test_the_gateway_reaches_an_engine_through_its_node_s_relay(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    key = RelayKey.generate()
    rt = make(relay_key=key)
    grant = GpuGrant(devices=("GPU-c1",), node=cluster.nodes["cloud"])
    await rt.start(spec("n1", data, gpu=grant))
    ready = await rt.wait_ready("n1", timeout=15)
    endpoint = ready.endpoint
    assert endpoint is not None and endpoint.relay_for == "n1" and endpoint.unix_path is None
    assert (await relayed_get(endpoint, key, "/")).text == "engine n1 ok\n"
    with pytest.raises(httpx.TransportError):
        await relayed_get(endpoint, RelayKey.generate(), "/")  # another key: refused
    other = Endpoint(host=endpoint.host, port=endpoint.port, relay_for="not-on-this-node")
    with pytest.raises(httpx.TransportError):
        await relayed_get(other, key, "/")
    adopter = make(relay_key=key)
    [listed] = await adopter.list()
    assert listed.endpoint == endpoint  # the node's relay outlives the gateway process
    import ray

    relay = ray.get_actor(f"relay-{cluster.nodes['cloud']}", namespace=rt._namespace)
    ray.kill(relay, no_restart=False)  # Ray restarts it, perhaps on another port
    endpoint = await reached_again(adopter, "n1", key)
    await adopter.stop("n1", grace=5)
    with pytest.raises(httpx.TransportError):
        await relayed_get(endpoint, key, "/")


@pytest.mark.needs("sandbox")
async def test_a_sandboxed_engine_ends_with_its_supervisor(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    """Engines never outlive their supervision: Ray ends a killed actor's child processes (the
    engine's wrapper), and bubblewrap's ``--die-with-parent`` ends the sandbox with it."""
    import ray

    from aigc_gateway.runtime.ray.runtime import ACTOR_PREFIX

    rt = make(sandbox="on")
    volume = await rt.volumes.create("bob", "demo")
    grant = GpuGrant(devices=("GPU-1",), node=cluster.nodes["onprem-a"])
    await rt.start(spec("d1", data, gpu=grant, data_dir=volume, labels={"owner": "bob"}))
    ready = await rt.wait_ready("d1", timeout=30)
    assert ready.phase is Phase.READY, ready
    assert (await get(ready, "/")).text == "engine d1 ok\n"
    assert ready.pid is not None
    actor = ray.get_actor(ACTOR_PREFIX + "d1", namespace=rt._namespace)
    await killed(actor)
    seen = await rt.observe("d1")
    assert seen.phase is Phase.EXITED and "ended with it" in seen.message, seen
    assert not await reachable(ready)
    assert (await rt.stop("d1", grace=1)).phase is Phase.ABSENT
    await rt.volumes.delete("bob", "demo")


def test_the_ray_runtime_is_chosen_by_name_and_imports_ray_only_when_used(
    tmp_path: Path,
) -> None:
    """``runtime: ray`` names the entry point; importing the package (and building the runtime)
    imports no Ray, so a gateway without Ray installed is unaffected until it connects."""
    script = (
        "import sys\n"
        "from aigc_gateway.runtime import plugins\n"
        "from aigc_gateway.settings import Settings\n"
        f"s = Settings(runtime='ray', data_dir={str(tmp_path)!r}, ray_namespace='ns1',"
        " ray_address='ray://head:10001', sandbox='off', dev=True)\n"
        "rt = plugins.load('ray')(s)\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "print(type(rt).__name__, rt._namespace, rt._address, rt.node_config.node_dir,"
        " rt._relay_key is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    node_dir = tmp_path.resolve() / "ray-nodes" / "{node}"
    assert done.stdout.split() == ["RayRuntime", "ns1", "ray://head:10001", str(node_dir), "True"]


async def test_an_exited_engine_started_again_goes_where_its_new_grant_is(
    cluster: RayCluster, make: Make, data: Path
) -> None:
    rt = make()
    first = GpuGrant(devices=("GPU-a1",), node=cluster.nodes["onprem-a"])
    await rt.start(spec("x1", data, "--exit-code", "2", gpu=first))
    assert (await rt.wait_ready("x1", timeout=15)).phase is Phase.EXITED
    assert engines_on(cluster, "onprem-a") == {"x1"}
    moved = GpuGrant(devices=("GPU-c1", "GPU-c2"), node=cluster.nodes["cloud"])
    await rt.start(spec("x1", data, gpu=moved))
    ready = await rt.wait_ready("x1", timeout=15)
    assert ready.phase is Phase.READY
    assert engines_on(cluster, "cloud") == {"x1"}
    assert (await get(ready, "/env")).json()["CUDA_VISIBLE_DEVICES"] == "GPU-c1,GPU-c2"


def test_a_gateway_process_joins_the_cluster_itself(cluster: RayCluster) -> None:
    """A gateway not yet connected to Ray (as ``serve`` starts) joins at ``ray_address`` on its
    first call, from its event loop, and leaves on ``close``."""
    script = (
        "import asyncio, sys\n"
        "import ray\n"
        "from aigc_gateway.runtime.ray.node import NodeConfig\n"
        "from aigc_gateway.runtime.ray.runtime import RayRuntime\n"
        "async def main():\n"
        f"    rt = RayRuntime(config=NodeConfig(node_dir={cluster.node_dir!r}),"
        f" address={cluster.address!r}, namespace='joined')\n"
        "    found = await rt.gpus()\n"
        "    assert await rt.list() == []\n"
        "    await rt.close()\n"
        "    print(len(found.devices), ray.is_initialized())\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["8", "False"]
