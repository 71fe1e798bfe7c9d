"""GPU placement, enforcement and the queue, end to end on CPU with a declared inventory.

Real engine processes report the environment they were started with, so these tests see exactly
what a CUDA program would: which cards are visible (by UUID) and, for a memory share, the MPS pipe
directory and pinned-memory limit. The MPS control program is the one fake (tests/support/
fake_mps.py): no NVIDIA driver runs here; ``bench/gpu/check.sh`` drives the real one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from aigc_gateway.settings import Settings
from tests.support.fake_mps import calls, install_fake_mps
from tests.support.gateway import (
    Api,
    add_user,
    engine_client,
    make_settings,
    stop_engines_async,
    write_templates,
)
from tests.support.process import gateway_process

RTX = {
    "type": "rtx4090",
    "memory_gib": 24,
    "pool": "onprem",
    "pool_rank": 1,
    "price_per_hour": 0.9,
}
A100 = {
    "type": "a100-80g",
    "memory_gib": 80,
    "pool": "cloud",
    "pool_rank": 2,
    "price_per_hour": 3.2,
}
TWO_CARDS = [{"id": "GPU-aaaa", **RTX}, {"id": "GPU-bbbb", "index": 1, **A100}]
ONE_CARD = [{"id": "GPU-aaaa", **RTX}]


@pytest.fixture
def gateway_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    program, _ = install_fake_mps(tmp_path / "mps-bin")
    overrides: dict[str, Any] = {"gpus": TWO_CARDS, "mps_control": str(program)}
    overrides.update(getattr(request, "param", {}))
    return make_settings(tmp_path, **overrides)


def mps_calls(tmp_path: Path) -> list[str]:
    return calls(tmp_path / "mps-bin" / "calls.log")


async def engine_env(admin: Api, inst: dict[str, Any]) -> dict[str, str]:
    async with await engine_client(admin, inst["id"]) as client:
        r = await client.get("/env")
    assert r.status_code == 200
    return dict(r.json())


async def test_whole_gpu_share_and_cpu_engines_see_exactly_what_they_were_given(
    alice: Api, bob: Api, admin: Api, tmp_path: Path
) -> None:
    whole = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
    env = await engine_env(admin, whole)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
    assert not any(k.startswith("CUDA_MPS") for k in env)
    assert whole["gpu"]["gpu_ids"] == ["GPU-aaaa"] and whole["gpu"]["share_gib"] is None
    assert "placed on GPU-aaaa (onprem, rtx4090): rank 1, price 0.90/h" in whole["gpu"]["placement"]
    # Memory shares go to the other card, under its own MPS daemon, with their limit.
    share = await alice.wait_state((await alice.create("tiny-share"))["id"], "running")
    env = await engine_env(admin, share)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=30720M"
    assert env["AIGC_GPU_MEMORY_MIB"] == "30720"
    pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
    daemon = int((pipe / "nvidia-cuda-mps-control.pid").read_text())
    assert psutil.pid_exists(daemon)
    assert mps_calls(tmp_path) == ["start GPU-bbbb"]
    second = await bob.wait_state((await bob.create("tiny-share-8"))["id"], "running")
    env2 = await engine_env(admin, second)
    assert env2["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)  # packed onto the shared card
    assert env2["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8192M"
    assert mps_calls(tmp_path) == ["start GPU-bbbb"]  # one daemon per card
    # A CPU engine sees no GPU at all.
    cpu = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    assert (await engine_env(admin, cpu))["CUDA_VISIBLE_DEVICES"] == ""

    view = (await admin.client.get("/api/gpus")).json()
    card_b = view["gpus"][1]
    assert card_b["mode"] == "shared" and card_b["allocated_gib"] == 38
    assert {(h["owner"], h["share_gib"]) for h in card_b["instances"]} == {
        ("alice", 30.0),
        ("bob", 8.0),
    }
    assert view["gpus"][0]["instances"][0]["name"] == whole["name"] and view["mps"] is True

    # The daemon stays while one share is left, and quits with the last.
    await alice.act(share["id"], "pause")
    await alice.wait_state(share["id"], "paused")
    assert mps_calls(tmp_path) == ["start GPU-bbbb"]
    await bob.act(second["id"], "pause")
    paused = await bob.wait_state(second["id"], "paused")
    assert mps_calls(tmp_path) == ["start GPU-bbbb", "quit GPU-bbbb"]
    assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == "zombie"
    assert not (pipe / "control").exists()
    assert paused["gpu"] is None
    # Releasing freed the card at once.
    view = (await admin.client.get("/api/gpus")).json()
    assert view["gpus"][1]["mode"] == "free" and view["gpus"][1]["free_gib"] == 80


@pytest.mark.parametrize("gateway_settings", [{"gpus": ONE_CARD}], indirect=True)
async def test_the_queue_starts_waiters_in_order_when_the_gpu_frees(
    alice: Api, bob: Api, admin: Api
) -> None:
    first = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
    waiting = await bob.create("tiny-gpu-any")
    waiting = await bob.wait_state(waiting["id"], "queued")
    assert waiting["queue"]["position"] == 1 and waiting["queue"]["length"] == 1
    assert waiting["queue"]["estimate_s"] is None  # no release seen yet: no invented number
    assert "waiting for a GPU: position 1 of 1" in waiting["reason"]
    third = await alice.wait_state(
        (await alice.create("tiny-gpu-any", name="later"))["id"], "queued"
    )
    assert third["queue"]["position"] == 2
    # A higher priority goes ahead of both.
    urgent = await bob.wait_state((await bob.create("tiny-gpu-hi"))["id"], "queued")
    assert urgent["queue"]["position"] == 1
    assert (await bob.get(waiting["id"]))["queue"]["position"] == 2
    queue = (await admin.client.get("/api/gpus")).json()["queue"]
    assert [(q["owner"], q["position"], q["priority"]) for q in queue] == [
        ("bob", 1, 10),
        ("bob", 2, 0),
        ("alice", 3, 0),
    ]
    # Cancelling leaves the queue; the others move up.
    await bob.act(urgent["id"], "pause")
    left = await bob.wait_state(urgent["id"], "paused")
    assert left["reason"] == "left the GPU queue; data kept" and left["queue"] is None
    assert (await alice.get(third["id"]))["queue"]["position"] == 2
    # The owner leaves: the next in line starts by itself and holds the card.
    await alice.act(first["id"], "pause")
    started = await bob.wait_state(waiting["id"], "running")
    assert started["gpu"]["gpu_ids"] == ["GPU-aaaa"]
    # One release seen: the last waiter now has an estimate.
    last = await alice.get(third["id"])
    assert last["state"] == "queued" and last["queue"]["position"] == 1
    assert last["queue"]["estimate_s"] is not None and last["queue"]["estimate_s"] > 0
    await bob.act(waiting["id"], "pause")
    assert (await alice.wait_state(third["id"], "running"))["gpu"]["gpu_ids"] == ["GPU-aaaa"]


@pytest.mark.parametrize(
    "gateway_settings",
    [{"gpus": [{"id": "GPU-aaaa", **RTX}, {"id": "GPU-cccc", "index": 1, **RTX}]}],
    indirect=True,
)
async def test_cordon_drain_and_uncordon(alice: Api, bob: Api, admin: Api) -> None:
    inst = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
    assert inst["gpu"]["gpu_ids"] == ["GPU-aaaa"]
    assert (await alice.client.post("/api/gpus/GPU-aaaa/drain")).status_code == 403
    r = await admin.client.post("/api/gpus/GPU-aaaa/drain")
    assert r.status_code == 200 and r.json()["moved"] == [inst["id"]]
    moved = await alice.wait_for(
        inst["id"], lambda i: i["state"] == "running" and i["gpu"]["gpu_ids"] != ["GPU-aaaa"]
    )
    assert moved["gpu"]["gpu_ids"] == ["GPU-cccc"]  # restarted on the other card
    assert moved["started_at"] != inst["started_at"]
    # Both cards out of placement: a new request waits rather than failing.
    assert (await admin.client.post("/api/gpus/GPU-cccc/cordon")).status_code == 200
    waiting = await bob.wait_state((await bob.create("tiny-gpu"))["id"], "queued")
    view = (await admin.client.get("/api/gpus")).json()
    assert [g["cordon"] for g in view["gpus"]] == ["drain", "cordon"]
    assert (await admin.client.post("/api/gpus/GPU-aaaa/uncordon")).json()["cordon"] is None
    started = await bob.wait_state(waiting["id"], "running")
    assert started["gpu"]["gpu_ids"] == ["GPU-aaaa"]
    assert (await admin.client.post("/api/gpus/GPU-nope/cordon")).status_code == 404


@pytest.mark.parametrize("gateway_settings", [{"gpus": TWO_CARDS}], indirect=True)
async def test_two_gpus_on_one_host_or_a_clear_refusal(alice: Api, admin: Api) -> None:
    # The two declared cards are on one host but of different types: a pair fits.
    pair = await alice.wait_state((await alice.create("tiny-gpu-pair"))["id"], "running")
    assert sorted(pair["gpu"]["gpu_ids"]) == ["GPU-aaaa", "GPU-bbbb"]
    assert (await engine_env(admin, pair))["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"


async def test_a_killed_gateway_keeps_gpu_allocations_and_the_queue(
    tmp_path: Path, listener: socket.socket
) -> None:
    """SIGKILL with one engine holding the only GPU and two instances queued: after a restart
    the holder still holds it (nobody else is placed on it), the queue keeps its order, and a
    release starts the first waiter."""
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    env = {"AIGC_GPUS": json.dumps(ONE_CARD)}
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice")
    port = listener.getsockname()[1]
    try:
        with gateway_process(data, templates, listener, **env) as gw:
            async with api_for(port, token) as api:
                holder = await api.wait_state((await api.create("tiny-gpu"))["id"], "running")
                first = await api.wait_state(
                    (await api.create("tiny-gpu-any", name="first"))["id"], "queued"
                )
                second = await api.wait_state(
                    (await api.create("tiny-gpu-any", name="second"))["id"], "queued"
                )
            gw.kill()  # SIGKILL: no shutdown code runs
            gw.wait(10)
        with gateway_process(data, templates, listener, **env):
            async with api_for(port, token) as api:
                again = await api.get(holder["id"])
                assert again["state"] == "running" and again["gpu"]["gpu_ids"] == ["GPU-aaaa"]
                assert [(await api.get(i["id"]))["queue"]["position"] for i in (first, second)] == [
                    1,
                    2,
                ]
                await api.act(holder["id"], "pause")
                started = await api.wait_state(first["id"], "running")
                assert started["gpu"]["gpu_ids"] == ["GPU-aaaa"]
                assert (await api.get(second["id"]))["queue"]["position"] == 1
    finally:
        await stop_engines_async(settings)


@asynccontextmanager
async def api_for(port: int, token: str) -> AsyncIterator[Api]:
    api = Api(f"http://127.0.0.1:{port}", token)
    try:
        yield api
    finally:
        await api.aclose()
