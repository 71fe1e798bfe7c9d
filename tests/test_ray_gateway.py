"""End to end: the gateway with ``runtime: ray`` on a real cluster of four nodes on this machine
(tests/support/ray_cluster.py). A user's instance starts on an engine node (not the head), is
served through the gateway's proxy via that node's relay, and its pause ends its supervisor (a resume makes a new one)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.gateway import Api, make_settings
from tests.support.hosts import browser_for
from tests.support.ray_cluster import RayCluster, ray_cluster

pytestmark = pytest.mark.needs("ray")

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster() as found:
        yield found


@pytest.fixture
def gateway_settings(cluster: RayCluster) -> Iterator[Settings]:
    folder = Path(tempfile.mkdtemp(prefix="aigc-", dir="/tmp"))
    try:
        yield make_settings(
            folder,
            runtime="ray",
            sandbox="off",
            ray_namespace=f"gateway-{uuid.uuid4().hex[:8]}",
            ray_node_dir=cluster.node_dir,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_an_instance_runs_on_a_node_and_serves_through_its_relay(
    cluster: RayCluster, gateway: RunningGateway, alice: Api, admin: Api
) -> None:
    import ray

    inst = await alice.wait_state((await alice.create("demo-unix"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    endpoint = Endpoint.parse((await admin.get(inst["id"]))["engine_endpoint"])
    assert endpoint.relay_for == inst["id"]
    folders = {name: cluster.folder(name) for name in cluster.nodes}
    on = [n for n, f in folders.items() if (f / "runtime" / "ray" / inst["id"]).is_dir()]
    assert len(on) == 1  # one engine node holds it
    browser = browser_for(gateway.url, follow_redirects=True, timeout=60)
    try:
        r = await browser.post(
            f"{gateway.url}/auth/login",
            data={"username": "alice", "password": "pw-alice", "next": "/api/me"},
        )
        assert r.status_code == 200
        page = await browser.get(inst["url"], headers=HTML)
        assert page.status_code == 200 and "Demo engine" in page.text
    finally:
        await browser.aclose()
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    assert (await admin.get(inst["id"]))["engine_endpoint"] is None
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor(f"engine-{inst['id']}", namespace=gateway.settings.ray_namespace)
    await alice.act(inst["id"], "resume")  # a new supervisor, on an engine node again
    resumed = await alice.wait_state(inst["id"], "running", "failed")
    assert resumed["state"] == "running", resumed["reason"]
    assert ray.get_actor(f"engine-{inst['id']}", namespace=gateway.settings.ray_namespace)
