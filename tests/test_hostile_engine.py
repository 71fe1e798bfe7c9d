"""A hostile engine under the sandboxed local runtime tries every escape; each one fails.

The engine (tests/engines/hostile.py) runs as a real sandboxed process (bubblewrap, a per-user
uid, a cgroup) with the gateway's secrets on this host as its targets: this test process plays
the gateway (its pid, its environment, its database and secret key files, its TCP port), and a
second sandboxed engine of another user plays the neighbour. On today's main every attempt
succeeds: the engine runs as the gateway's own user with the host's filesystem, processes and
loopback (and ``LocalRuntime`` takes no sandbox, so the fixture itself fails there).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from aigc_gateway.runtime.base import EngineResources, Phase
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.runtime.sandbox import cgroups
from tests.support.sandbox import hostile_spec, running_sandboxed

pytestmark = pytest.mark.needs("sandbox")


@pytest.fixture
def gateway_files(tmp_path: Path) -> Path:
    """A gateway data folder with a database and a secret key, as a real one has."""
    data = tmp_path / "gateway-data"
    data.mkdir(mode=0o700)
    (data / "gateway.db").write_bytes(b"SQLite format 3\0" + b"users" * 20)
    (data / "secret_key").write_text("s3cret-" * 8)
    return data


@pytest.fixture
def listeners() -> Iterator[dict[str, int]]:
    """TCP ports on the host's loopback: the gateway's, and an unsandboxed engine's."""
    socks = []
    ports = {}
    for name in ("gateway_port", "tcp_engine"):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        socks.append(sock)
        ports[name] = sock.getsockname()[1]
    try:
        yield ports
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
async def runtime(tmp_path: Path, gateway_files: Path) -> AsyncIterator[LocalRuntime]:
    async with running_sandboxed(tmp_path / "state", hidden=(str(gateway_files),)) as rt:
        yield rt


async def test_every_escape_fails(
    runtime: LocalRuntime, tmp_path: Path, gateway_files: Path, listeners: dict[str, int]
) -> None:
    """Files, /proc, processes, signals, loopback TCP, the metadata address, another engine's
    socket, setuid root, root itself: nothing. (On main each of these works.)"""
    neighbour = await runtime.start(
        hostile_spec(tmp_path, "--mode", "idle", instance_id="bob-1", owner="bob")
    )
    await runtime.wait_ready("bob-1", timeout=20)
    bob_volume = tmp_path / "volumes" / "bob" / "bob-1"
    (bob_volume / "model.safetensors").write_bytes(b"weights")
    assert neighbour.endpoint is not None and neighbour.endpoint.unix_path
    targets = {
        "gateway_pid": os.getpid(),
        "database": str(gateway_files / "gateway.db"),
        "secret": str(gateway_files / "secret_key"),
        "other_volume": str(bob_volume),
        "other_file": str(bob_volume / "model.safetensors"),
        "tcp_ports": listeners,
        "other_socket": neighbour.endpoint.unix_path,
    }
    await runtime.start(
        hostile_spec(
            tmp_path, "--targets", json.dumps(targets), instance_id="alice-1", owner="alice"
        )
    )
    ready = await runtime.wait_ready("alice-1", timeout=20)
    assert ready.phase is Phase.READY, ready.log_tail
    report = json.loads((tmp_path / "volumes" / "alice" / "alice-1" / "report.json").read_text())
    escaped = {name: r["detail"] for name, r in report.items() if r["ok"]}
    assert escaped == {}
    expected = {
        "read_database", "read_secret", "proc_root_database", "proc_environ", "proc_fd",
        "list_other_volume", "read_other_file", "see_processes", "signal_gateway",
        "connect_gateway_port", "connect_tcp_engine", "connect_metadata",
        "connect_other_socket", "setuid_root_file", "become_root", "no_new_privs", "whoami",
    }  # fmt: skip
    assert set(report) == expected
    uid = int(report["whoami"]["detail"].split(":")[0])
    assert uid != 0 and (tmp_path / "volumes" / "alice" / "alice-1").stat().st_uid == uid
    assert bob_volume.stat().st_uid not in (0, uid)


async def test_memory_limit_fails_the_engine_with_the_reason(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """Past its memory limit the engine is killed and reported "out of memory (limit …)", not
    as a bare exit code. (On main nothing limits it: it takes the host's memory.)"""
    spec = hostile_spec(
        tmp_path, "--mode", "oom", instance_id="oom-1", owner="alice",
        resources=EngineResources(cpu=1, memory_mib=96),
    )  # fmt: skip
    await runtime.start(spec)
    done = await runtime.wait_ready("oom-1", timeout=30)
    assert done.phase is Phase.EXITED
    assert done.message == "out of memory (limit 96 MiB)"
    assert done.exit_code == 137


async def test_fork_bomb_stops_at_pids_max(runtime: LocalRuntime, tmp_path: Path) -> None:
    """A fork bomb gets no further than the cgroup's pids limit, and the stop ends all of it.
    (On main it forks until the host's limit.)"""
    spec = hostile_spec(
        tmp_path, "--mode", "idle", instance_id="bomb-1", owner="alice",
        resources=EngineResources(cpu=1, memory_mib=512, pids=40),
    )  # fmt: skip
    await runtime.start(spec)
    ready = await runtime.wait_ready("bomb-1", timeout=30)
    assert ready.phase is Phase.READY and ready.endpoint and ready.endpoint.unix_path
    transport = httpx.AsyncHTTPTransport(uds=ready.endpoint.unix_path)
    async with httpx.AsyncClient(transport=transport) as client:
        result = (await client.get("http://engine/forkbomb", timeout=30)).json()
    assert 20 < result["children"] < 40
    assert "Resource temporarily unavailable" in result["error"]
    cgroup = _cgroup(tmp_path, "bomb-1")
    members = cgroups.members(cgroup)
    assert 20 < len(members) <= 40
    await runtime.stop("bomb-1", grace=0.2)
    assert not any(psutil.pid_exists(p) and _alive(p) for p in members)


async def test_cpu_hog_is_held_at_its_quota(runtime: LocalRuntime, tmp_path: Path) -> None:
    """Two spinning threads of an engine allowed 0.2 CPU use about 0.2 CPU, measured from its
    cgroup. (On main they take two whole cores.)"""
    spec = hostile_spec(
        tmp_path, "--mode", "cpu", instance_id="cpu-1", owner="alice",
        resources=EngineResources(cpu=0.2, memory_mib=256),
    )  # fmt: skip
    await runtime.start(spec)
    assert (await runtime.wait_ready("cpu-1", timeout=30)).phase is Phase.READY
    cgroup = _cgroup(tmp_path, "cpu-1")
    loop = asyncio.get_running_loop()
    used0, t0 = cgroups.cpu_usage_s(cgroup), loop.time()
    await asyncio.sleep(1.5)  # the measuring window itself, not a synchronisation
    used1, t1 = cgroups.cpu_usage_s(cgroup), loop.time()
    assert used0 is not None and used1 is not None
    share = (used1 - used0) / (t1 - t0)
    assert 0.05 < share < 0.3


async def test_a_daemonised_grandchild_does_not_survive_the_stop(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """A double-forked ``setsid`` daemon leaves the engine's process group, but not its cgroup
    and PID namespace: the stop ends it, and no cgroup is left after forget. (On main the daemon
    lives on after the stop.)"""
    await runtime.start(
        hostile_spec(tmp_path, "--mode", "daemon", instance_id="d-1", owner="alice")
    )
    assert (await runtime.wait_ready("d-1", timeout=30)).phase is Phase.READY
    cgroup = _cgroup(tmp_path, "d-1")
    members = cgroups.members(cgroup)
    sessions = {os.getsid(p) for p in members if _alive(p)}
    assert len(sessions) >= 3  # the wrapper's, the sandbox's, the daemon's own
    await runtime.stop("d-1", grace=1)
    assert not any(_alive(p) for p in members)
    await runtime.forget("d-1")
    assert "d-1" not in runtime.leftover_cgroups()
    assert not any(os.path.exists(d) for d in cgroup.dirs)


def _cgroup(tmp_path: Path, instance_id: str) -> cgroups.Cgroup:
    record = json.loads((tmp_path / "state" / instance_id / "workload.json").read_text())
    c = record["cgroup"]
    return cgroups.Cgroup(
        c["version"], tuple(c["dirs"]), c["memory_dir"], c["cpuacct_dir"], c["freezer_dir"]
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
