"""A gateway killed with SIGKILL while engines run loses nothing: on restart every instance is
re-adopted (same process, still reachable, state correct), and nothing is orphaned."""

from __future__ import annotations

import socket
from contextlib import suppress
from pathlib import Path

import httpx
import psutil

from aigc_gateway.runtime import plugins
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.settings import Settings
from tests.support.gateway import (
    Api,
    add_user,
    endpoint_client,
    engine_client,
    stop_engines_async,
    write_templates,
)
from tests.support.process import gateway_process


async def test_sigkill_gateway_then_restart_readopts_engines(
    tmp_path: Path, listener: socket.socket
) -> None:
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice", admin=True)  # an operator: sees engine addresses
    try:
        await _kill_and_readopt(data, templates, token, listener)
    finally:
        await stop_engines_async(settings)


async def _kill_and_readopt(
    data: Path, templates: Path, token: str, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    with gateway_process(data, templates, listener) as gw:
        api = Api(f"http://127.0.0.1:{port}", token)
        running = [
            await api.wait_state((await api.create("tiny", name=f"n{i}"))["id"], "running")
            for i in range(2)
        ]
        paused = await api.wait_state((await api.create("tiny", name="p"))["id"], "running")
        await api.act(paused["id"], "pause")
        await api.wait_state(paused["id"], "paused")
        pids = {}
        for inst in running:
            events = (await api.client.get(f"/api/instances/{inst['id']}/events")).json()
            pids[inst["id"]] = [e["data"]["pid"] for e in events if "pid" in e["data"]][-1]
        await api.aclose()
        gw.kill()  # SIGKILL: no shutdown code runs
        gw.wait(10)

    # Engines kept running without their gateway.
    assert all(psutil.pid_exists(pid) for pid in pids.values())
    with gateway_process(data, templates, listener):
        api = Api(f"http://127.0.0.1:{port}", token)
        try:
            for inst in running:
                again = await api.get(inst["id"])
                assert again["state"] == "running"
                assert again["engine_endpoint"] == inst["engine_endpoint"]
                async with await engine_client(api, inst["id"]) as engine:
                    assert (await engine.get("/")).text == "ok"
                events = (await api.client.get(f"/api/instances/{inst['id']}/events")).json()
                assert [e["data"]["pid"] for e in events if "pid" in e["data"]][-1] == pids[
                    inst["id"]
                ]
                assert psutil.pid_exists(pids[inst["id"]])
            assert (await api.get(paused["id"]))["state"] == "paused"
            # Still fully controllable after re-adoption.
            await api.act(running[0]["id"], "pause")
            await api.wait_state(running[0]["id"], "paused")
            assert not psutil.pid_exists(pids[running[0]["id"]]) or (
                psutil.Process(pids[running[0]["id"]]).status() == psutil.STATUS_ZOMBIE
            )
            for inst in [*running, paused]:
                await api.client.delete(f"/api/instances/{inst['id']}")
            for inst in [*running, paused]:
                await api.wait_state(inst["id"], "deleted")
        finally:
            await api.aclose()
    # Nothing of the sandboxes is left behind: no engine cgroup, no socket.
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    runtime = plugins.local(settings)
    assert isinstance(runtime, LocalRuntime)
    try:
        if runtime.sandboxed:
            assert runtime.leftover_cgroups() == []
        assert not [p for p in (data / "runtime").rglob("*.sock")]
    finally:
        await runtime.close()


async def test_engine_crash_while_gateway_is_down_is_reported_after_restart(
    tmp_path: Path, listener: socket.socket
) -> None:
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice", admin=True)  # an operator: sees engine addresses
    try:
        await _crash_while_down(data, templates, token, listener)
    finally:
        await stop_engines_async(settings)


async def _crash_while_down(
    data: Path, templates: Path, token: str, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    with gateway_process(data, templates, listener) as gw:
        api = Api(f"http://127.0.0.1:{port}", token)
        inst = await api.wait_state((await api.create("tiny"))["id"], "running")
        await api.aclose()
        gw.kill()
        gw.wait(10)
    async with endpoint_client(inst["engine_endpoint"]) as engine:
        with suppress(httpx.HTTPError):
            await engine.get("/crash", params={"code": "9"})
    with gateway_process(data, templates, listener):
        api = Api(f"http://127.0.0.1:{port}", token)
        try:
            failed = await api.wait_state(inst["id"], "failed", timeout=30)
            assert failed["exit_code"] == 9
            assert "code 9" in failed["reason"]
        finally:
            await api.aclose()
