"""GPU requests against the inventory: a GPU-less host refuses GPU templates clearly; a declared
inventory accepts what fits and refuses what never could, at once and with the reason."""

from __future__ import annotations

import pytest

from tests.support.gateway import Api

DECLARED = [
    {
        "id": "GPU-aaaa",
        "type": "rtx4090",
        "memory_gib": 24,
        "pool": "onprem",
        "pool_rank": 1,
        "price_per_hour": 0.9,
    },
    {
        "id": "GPU-bbbb",
        "type": "a100-80g",
        "memory_gib": 80,
        "pool": "cloud",
        "pool_rank": 2,
        "price_per_hour": 3.2,
    },
]


@pytest.mark.parametrize("gateway_settings", [{"gpu_discovery": False}], indirect=True)
async def test_a_host_without_gpus_refuses_gpu_templates_clearly(alice: Api, admin: Api) -> None:
    r = await alice.client.post("/api/instances", json={"template": "tiny-gpu"})
    assert r.status_code == 409
    assert r.json()["code"] == "gpu_unavailable"
    assert "needs 1 GPU(s)" in r.json()["message"] and "no GPU" in r.json()["message"]
    # CPU templates still run.
    assert (await alice.client.post("/api/instances", json={"template": "tiny"})).status_code == 201
    inventory = (await admin.client.get("/api/gpus")).json()
    assert inventory["gpus"] == [] and "no GPU is declared" in inventory["source"]


@pytest.mark.parametrize("gateway_settings", [{"gpus": DECLARED}], indirect=True)
async def test_declared_inventory(alice: Api, admin: Api) -> None:
    assert (
        await alice.client.post("/api/instances", json={"template": "tiny-gpu"})
    ).status_code == 201
    r = await alice.client.post("/api/instances", json={"template": "tiny-share"})
    assert r.status_code == 201  # 30 GiB fits the 80 GiB card
    inventory = (await admin.client.get("/api/gpus")).json()
    assert [g["id"] for g in inventory["gpus"]] == ["GPU-aaaa", "GPU-bbbb"]
    assert inventory["gpus"][0]["pool"] == "onprem"
    assert inventory["source"] == "2 GPU(s): 2 declared in the settings"
    assert (await alice.client.get("/api/gpus")).status_code == 403


@pytest.mark.parametrize(
    "gateway_settings",
    [{"gpus": [{"id": "GPU-small", "type": "rtx3060", "memory_gib": 12}]}],
    indirect=True,
)
async def test_requests_that_could_never_fit_are_refused_with_the_reason(alice: Api) -> None:
    wrong_type = await alice.client.post("/api/instances", json={"template": "tiny-gpu"})
    assert wrong_type.status_code == 409
    assert "no GPU of an accepted type (rtx4090)" in wrong_type.json()["message"]
    too_big = await alice.client.post("/api/instances", json={"template": "tiny-share"})
    assert too_big.status_code == 409
    assert "30 GiB share is larger than any accepted card (12 GiB)" in too_big.json()["message"]
