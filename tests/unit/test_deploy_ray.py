"""The Ray deployment examples in ``deploy/ray/`` say what the gateway needs: the cluster
launcher config is valid by Ray's own schema, every GPU worker carries the labels placement
reads (pool, GPU type) and the ``engine`` resource the supervisors hold, engines never land on
the head, and idle nodes are given back slowly enough not to thrash. The KubeRay manifest runs
the pinned Ray version and its GPU counts agree between Ray and Kubernetes."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.needs("ray")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "ray"
MIN_IDLE_S = 600
"""Shorter than this, a node given back is asked for again by the next user's start."""


def _load(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(loaded, dict), name
    return loaded


def _labels(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(","))


def _resources(text: str) -> dict[str, int]:
    parsed = json.loads(json.loads(text.strip("'")))  # KubeRay wants a quoted JSON string
    assert isinstance(parsed, dict)
    return parsed


def test_the_cloud_cluster_is_valid_for_ray_and_for_the_gateway() -> None:
    config = _load("cloud-cluster.yaml")
    schema = json.loads(
        (importlib.resources.files("ray.autoscaler") / "ray-schema.json").read_text()
    )
    jsonschema.validate(config, schema)
    assert config["idle_timeout_minutes"] * 60 >= MIN_IDLE_S
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"].get("head") == 1 and head["resources"].get("CPU") == 0
    assert "engine" not in head["resources"]
    assert types, "no worker node type"
    for name, node in types.items():
        assert node["labels"]["pool"] and node["labels"]["gpu-type"], name
        assert node["resources"]["GPU"] >= 1 and node["resources"]["engine"] >= 1, name
        assert node["min_workers"] == 0, f"{name}: cloud nodes are added on demand"


def test_the_kuberay_cluster_autoscales_gpu_pools_on_the_pinned_ray() -> None:
    cluster = _load("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    pinned = importlib.metadata.version("ray")
    assert spec["rayVersion"] == pinned
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] >= MIN_IDLE_S
    head = spec["headGroupSpec"]
    assert _resources(head["rayStartParams"]["resources"]) == {"head": 1}
    assert head["rayStartParams"]["num-cpus"] == "0"  # engines never on the head
    images = [c["image"] for c in head["template"]["spec"]["containers"]]
    pools: set[str] = set()
    for group in spec["workerGroupSpecs"]:
        name, params = group["groupName"], group["rayStartParams"]
        labels = _labels(params["labels"])
        assert labels["pool"] and labels["gpu-type"] and int(labels["pool_rank"]) >= 1, name
        pools.add(labels["pool"])
        assert _resources(params["resources"])["engine"] >= 1, name
        (container,) = group["template"]["spec"]["containers"]
        images.append(container["image"])
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == params["num-gpus"], f"{name}: Ray and k8s disagree"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    assert {"onprem", "cloud"} <= pools
    assert all(image.split(":")[1].startswith(pinned) for image in images), images
