"""A real multi-node Ray cluster on this machine, for the Ray runtime's tests.

:func:`ray_cluster` starts a head (no engines: the ``head`` resource only) and three engine
nodes (:data:`NODES`), each with its own labels, fake GPUs (Ray counts them; no driver is
involved) and ``engine`` resource; every node's folder is ``<root>/nodes/<node id prefix>``, as
on separate machines. Every node, and the relays, listen on 127.0.0.1 only.

The nodes are started by ``ray.cluster_utils.Cluster`` in a helper process of their own
(:data:`HELPER`), which ends them all when its stdin closes, so no raylet outlives the test
module even if it is killed; and Ray's own start-up leaks (files it leaves open) stay out of the
test process, whose warnings are errors. This process joins as the driver. Starting it is the
slow part (seconds), so a test module shares one (a module-scoped fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.tools import require_tool

OBJECT_STORE_BYTES = 80 * 1024 * 1024
"""Each node's object store: the tests pass small values only."""

START_TIMEOUT_S = 120.0

_ONPREM = {"pool": "onprem", "pool_rank": "1", "gpu-type": "rtx4090", "gpu-memory-gib": "24"}
NODES: dict[str, dict[str, Any]] = {
    "onprem-a": {"num_gpus": 2, "labels": _ONPREM},
    "onprem-b": {"num_gpus": 2, "labels": _ONPREM},
    "cloud": {
        "num_gpus": 4,
        "labels": {"pool": "cloud", "pool_rank": "2", "gpu-type": "h100", "gpu-memory-gib": "80"},
    },
}
"""The engine nodes by name: two on-prem with two cards each, one cloud node with four."""

HELPER = """
import json, sys
from ray.cluster_utils import Cluster

nodes, store = json.loads(sys.argv[1]), int(sys.argv[2])
cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False,
                    "object_store_memory": store},
)
try:
    ids = {}
    for name, spec in nodes.items():
        node = cluster.add_node(num_cpus=2, resources={"engine": 10}, object_store_memory=store,
                                **spec)
        ids[name] = node.node_id
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": ids}), flush=True)
    sys.stdin.read()  # until the test process closes it (or dies)
finally:
    cluster.shutdown()
"""


@dataclass
class RayCluster:
    root: Path
    """Every node's folder is below ``root / "nodes"``."""
    address: str
    nodes: dict[str, str] = field(default_factory=dict)
    """Node name (a key of :data:`NODES`) → its Ray node id."""

    @property
    def node_dir(self) -> str:
        """The ``ray_node_dir`` setting for this cluster."""
        return str(self.root / "nodes" / "{node}")

    def folder(self, name: str) -> Path:
        """The folder of node ``name``."""
        return self.root / "nodes" / self.nodes[name][:12]


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    require_tool("ray")
    # Ray's coming default (it warns at ray.init otherwise): an actor of no GPUs keeps the
    # CUDA_VISIBLE_DEVICES it inherits; the engine's own is set by the runtime anyway.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Every node, the driver and the relays on 127.0.0.1 (Ray's single-machine mode, read when
    # Ray is imported: before this process's first import of it and in every node's process).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, json.dumps(NODES), str(OBJECT_STORE_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        line = helper.stdout.readline()
        if not line:
            raise RuntimeError(f"the Ray cluster did not start (exit status {helper.wait()})")
        started = json.loads(line)
        ray.init(address=started["address"], namespace="aigc-tests", log_to_driver=False)
        try:
            yield RayCluster(root, started["address"], started["nodes"])
        finally:
            ray.shutdown()
    finally:
        helper.stdin.close()
        try:
            helper.wait(START_TIMEOUT_S)
        finally:
            helper.stdout.close()
            if helper.poll() is None:
                helper.kill()
                helper.wait()
        shutil.rmtree(root, ignore_errors=True)
