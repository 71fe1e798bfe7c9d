"""The local runtime with the sandbox, with real engines (tests/runtime/engines/engine.py, the
demo engine, tests/engines/tiny.py and wire.py): they run, are reached over their Unix socket,
stop gracefully, survive a gateway restart, and leave nothing behind. On today's main
``LocalRuntime`` takes no sandbox, so each of these fails there.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.support.sandbox import sandboxed_runtime

from aigc_gateway.runtime.base import (
    LaunchSpec,
    Phase,
    ReadinessCheck,
    ReadinessKind,
    ReadinessTimeout,
)
from aigc_gateway.runtime.local import LocalRuntime

pytestmark = pytest.mark.needs("sandbox")

ENGINES = Path(__file__).resolve().parents[1] / "engines"
RUNTIME_ENGINE = str(Path(__file__).parent / "engines" / "engine.py")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    rt = sandboxed_runtime(tmp_path / "state")
    try:
        yield rt
    finally:
        for w in await rt.list():
            await rt.stop(w.instance_id, grace=0.5)
            await rt.forget(w.instance_id)
        assert rt.leftover_cgroups() == []
        await rt.close()


def spec(tmp_path: Path, *command: str, instance_id: str = "s1", **changes: object) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id,
        command=command,
        data_dir=str(tmp_path / "volumes" / "{instance_id}"),
        labels={"owner": "alice"},
        **changes,  # type: ignore[arg-type]
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def get(socket_path: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path)) as client:
        return await client.get(f"http://engine{path}")


async def test_an_engine_runs_sandboxed_and_is_reached_on_its_socket(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    started = await runtime.start(
        spec(
            tmp_path, sys.executable, RUNTIME_ENGINE, "--data-dir", "{data_dir}",
            env={"ENGINE_ID": "{instance_id}"}, readiness=ReadinessCheck(path="/health"),
        )
    )  # fmt: skip
    assert started.endpoint is not None and started.endpoint.unix_path is not None
    assert started.endpoint is not None and started.endpoint.host is None
    ready = await runtime.wait_ready("s1", timeout=20)
    assert ready.phase is Phase.READY
    response = await get(started.endpoint.unix_path, "/x")
    assert response.text == "engine s1 ok\n"
    info = json.loads((tmp_path / "volumes" / "s1" / "engine.json").read_text())
    assert info["cwd"] == "/data"
    assert info["argv"][-1] == "/data"
    assert info["env"]["HOME"] == "/data"
    assert (tmp_path / "volumes" / "s1").stat().st_uid == runtime._sandbox.uid_for("alice")  # type: ignore[union-attr]


async def test_a_stop_is_graceful_then_kills_the_cgroup(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """SIGTERM reaches the engine inside (its slow stop finishes); an engine ignoring it is
    killed after the grace with everything it started."""
    await runtime.start(
        spec(tmp_path, sys.executable, RUNTIME_ENGINE, "--data-dir", "{data_dir}",
             "--slow-stop", "0.3", readiness=ReadinessCheck(path="/"))
    )  # fmt: skip
    await runtime.wait_ready("s1", timeout=20)
    stopped = await runtime.stop("s1", grace=10)
    assert stopped.phase is Phase.ABSENT
    assert (tmp_path / "volumes" / "s1" / "ended.json").exists()

    await runtime.start(
        spec(tmp_path, sys.executable, RUNTIME_ENGINE, "--data-dir", "{data_dir}",
             "--ignore-term", "--grandchild", instance_id="s2")
    )  # fmt: skip
    await runtime.wait_ready("s2", timeout=20)
    pid = (await runtime.observe("s2")).pid
    assert pid is not None
    tree = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    assert len(tree) >= 4
    await runtime.stop("s2", grace=0.3)
    assert [p for p in tree if alive(p)] == []


async def test_a_new_runtime_readopts_sandboxed_engines(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """A gateway killed with ``kill -9`` (here: a fresh runtime object over the same state)
    finds its sandboxed engines, reaches them on their sockets and stops them, leaving no
    cgroup."""
    tiny = str(ENGINES / "tiny.py")
    for n in ("r1", "r2"):
        await runtime.start(spec(tmp_path, sys.executable, tiny, "--data-dir", "{data_dir}",
                                 instance_id=n))  # fmt: skip
        await runtime.wait_ready(n, timeout=20)
    again = sandboxed_runtime(tmp_path / "state")
    try:
        found = {w.instance_id: w for w in await again.list()}
        assert {k: w.phase for k, w in found.items()} == {"r1": Phase.READY, "r2": Phase.READY}
        for w in found.values():
            assert w.endpoint is not None and w.endpoint.unix_path is not None
            assert (await get(w.endpoint.unix_path)).status_code == 200
        assert sorted(again.leftover_cgroups()) == ["r1", "r2"]
        for n in found:
            await again.stop(n, grace=2)
            await again.forget(n)
        assert again.leftover_cgroups() == []
        assert not any(
            Path(w.endpoint.unix_path).exists()
            for w in found.values()
            if w.endpoint and w.endpoint.unix_path
        )
    finally:
        await again.close()


async def test_the_demo_engine_serves_its_own_socket(runtime: LocalRuntime, tmp_path: Path) -> None:
    """``{socket}`` in a command: the engine listens on the socket itself (no forwarder)."""
    await runtime.start(
        spec(tmp_path, sys.executable, "-m", "aigc_gateway.demo_engine", "--uds", "{socket}",
             "--data-dir", "{data_dir}", readiness=ReadinessCheck(path="/"))
    )  # fmt: skip
    ready = await runtime.wait_ready("s1", timeout=30)
    assert ready.phase is Phase.READY, ready.log_tail
    assert ready.endpoint is not None and ready.endpoint.unix_path is not None
    assert (await get(ready.endpoint.unix_path)).status_code == 200
    record = json.loads((tmp_path / "state" / "s1" / "workload.json").read_text())
    assert record["forwarded"] is False


@pytest.mark.parametrize("engine", ["tiny.py", "wire.py"])
async def test_the_test_engines_run_sandboxed(
    runtime: LocalRuntime, tmp_path: Path, engine: str
) -> None:
    await runtime.start(
        spec(tmp_path, sys.executable, str(ENGINES / engine), "--data-dir", "{data_dir}")
    )
    ready = await runtime.wait_ready("s1", timeout=20)
    assert ready.phase is Phase.READY, ready.log_tail


async def test_tcp_readiness_through_the_forwarder(runtime: LocalRuntime, tmp_path: Path) -> None:
    """The forwarder always accepts; TCP readiness waits until the engine's port answers."""
    await runtime.start(
        spec(tmp_path, sys.executable, RUNTIME_ENGINE, "--data-dir", "{data_dir}",
             "--never-ready", readiness=ReadinessCheck(kind=ReadinessKind.TCP))
    )  # fmt: skip
    with pytest.raises(ReadinessTimeout, match="TCP connect on socket"):
        await runtime.wait_ready("s1", timeout=1)


async def test_volume_files_belong_to_the_users_uid(runtime: LocalRuntime, tmp_path: Path) -> None:
    """A volume made before the sandbox (owned by root) is handed to the user's uid."""
    volume = tmp_path / "volumes" / "s1"
    (volume / "old").mkdir(parents=True)
    (volume / "old" / "model.bin").write_bytes(b"x")
    await runtime.start(spec(tmp_path, sys.executable, str(ENGINES / "tiny.py"),
                             "--data-dir", "{data_dir}"))  # fmt: skip
    await runtime.wait_ready("s1", timeout=20)
    uid = os.stat(volume).st_uid
    assert uid != 0
    assert os.stat(volume / "old" / "model.bin").st_uid == uid


async def test_an_engine_sees_none_of_the_gateways_environment(
    runtime: LocalRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's environment holds its operator's credentials whatever their names; a
    sandboxed engine gets its template's variables and the locale and paths only. (Before,
    everything but ``AIGC_*`` passed through.)"""
    monkeypatch.setenv("PGPASSWORD", "operator-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    dump = (
        "import json, os, sys; d = sys.argv[1]; "
        "open(d + '/env.json', 'w').write(json.dumps(dict(os.environ))); "
        "os.execv(sys.executable, [sys.executable, sys.argv[2], '--data-dir', d])"
    )
    await runtime.start(
        spec(tmp_path, sys.executable, "-c", dump, "{data_dir}", str(ENGINES / "tiny.py"),
             env={"MODEL": "sdxl"})
    )  # fmt: skip
    assert (await runtime.wait_ready("s1", timeout=20)).phase is Phase.READY
    seen = json.loads((tmp_path / "volumes" / "s1" / "env.json").read_text())
    assert "PGPASSWORD" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    assert seen["MODEL"] == "sdxl" and seen["HOME"] == "/data" and seen["PATH"]


async def test_a_burst_of_new_connections_is_accepted_not_refused(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """A Unix socket refuses a connect at once when its listen backlog is full; with socat's
    default backlog (5), 64 clients connecting together got errors (seen as 502s under load)."""
    await runtime.start(
        spec(tmp_path, sys.executable, str(ENGINES / "tiny.py"), "--data-dir", "{data_dir}")
    )
    ready = await runtime.wait_ready("s1", timeout=20)
    assert ready.endpoint is not None and ready.endpoint.unix_path
    path = ready.endpoint.unix_path

    async def one() -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            return await reader.read(-1)
        finally:
            writer.close()

    answers = await asyncio.gather(*(one() for _ in range(64)), return_exceptions=True)
    refused = [a for a in answers if not isinstance(a, bytes)]
    assert refused == []
    assert all(a.startswith(b"HTTP/1.") and b" 200 " in a[:20] for a in answers)  # type: ignore[union-attr]
