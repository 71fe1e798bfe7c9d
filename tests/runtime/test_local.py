"""The local runtime, with real engine processes (tests/runtime/engines/engine.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest

from aigc_gateway.errors import Conflict
from aigc_gateway.runtime import local_procs as procs
from aigc_gateway.runtime.base import (
    Endpoint,
    LaunchError,
    LaunchSpec,
    NotSupported,
    Phase,
    ReadinessCheck,
    ReadinessKind,
    ReadinessTimeout,
    Runtime,
    Workload,
)
from aigc_gateway.runtime.local import LocalRuntime

ENGINE = str(Path(__file__).parent / "engines" / "engine.py")


def port_of(work: Workload) -> int:
    """The TCP port of a workload's endpoint (these engines listen on loopback TCP)."""
    assert work.endpoint is not None and work.endpoint.port is not None
    return work.endpoint.port


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def runtime(state_dir: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(state_dir=state_dir)
    try:
        yield rt
    finally:
        for w in await rt.list():
            if w.phase.alive or w.phase is Phase.EXITED:
                await rt.stop(w.instance_id, grace=0.5)
        await rt.close()


def spec(
    tmp_path: Path,
    *flags: str,
    instance_id: str = "i1",
    **changes: object,
) -> LaunchSpec:
    base = LaunchSpec(
        instance_id=instance_id,
        command=(sys.executable, ENGINE, "--data-dir", "{data_dir}", *flags),
        data_dir=str(tmp_path / "data" / "{instance_id}"),
        env={"ENGINE_ID": "{instance_id}"},
        readiness=ReadinessCheck(path="/health"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def engine_info(data_dir: Path) -> dict[str, object]:
    info: dict[str, object] = json.loads((data_dir / "engine.json").read_text())
    return info


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (checked every few ms), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def observe_until_not(runtime: LocalRuntime, instance_id: str, phase: Phase) -> Workload:
    async with asyncio.timeout(5):
        while (current := await runtime.observe(instance_id)).phase is phase:
            await asyncio.sleep(0.005)
    return current


async def test_it_is_a_runtime(runtime: LocalRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "local"


async def test_http_engine_lifecycle(runtime: LocalRuntime, tmp_path: Path) -> None:
    started = await runtime.start(spec(tmp_path))
    assert started.phase is Phase.STARTING
    assert started.pid is not None
    assert port_of(started) is not None
    assert started.endpoint == Endpoint(host="127.0.0.1", port=port_of(started))

    ready = await runtime.wait_ready("i1", timeout=10)
    assert ready.phase is Phase.READY
    assert (ready.pid, port_of(ready)) == (started.pid, port_of(started))
    assert ready.address == f"127.0.0.1:{port_of(started)}"
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://{ready.address}/anything")
    assert response.status_code == 200
    assert response.text == "engine i1 ok\n"
    info = engine_info(tmp_path / "data" / "i1")
    engine_pid = info["pid"]
    assert isinstance(engine_pid, int)
    assert info["cwd"] == str(tmp_path / "data" / "i1")
    assert (await runtime.observe("i1")).phase is Phase.READY
    assert "listening on" in await runtime.logs("i1")

    stopped = await runtime.stop("i1", grace=5)
    assert stopped.phase is Phase.ABSENT
    assert await refuses_connections(port_of(started))
    assert not running(started.pid)
    assert not running(engine_pid)
    assert (await runtime.observe("i1")).phase is Phase.ABSENT
    assert [(w.instance_id, w.phase) for w in await runtime.list()] == [("i1", Phase.ABSENT)]


async def test_unknown_instance_is_absent(runtime: LocalRuntime) -> None:
    assert (await runtime.observe("nope")).phase is Phase.ABSENT
    assert (await runtime.stop("nope", grace=1)).phase is Phase.ABSENT
    assert (await runtime.wait_ready("nope", timeout=1)).phase is Phase.ABSENT
    assert await runtime.logs("nope") == ""
    assert await runtime.list() == []
    await runtime.forget("nope")


async def test_start_and_stop_are_idempotent(runtime: LocalRuntime, tmp_path: Path) -> None:
    first = await runtime.start(spec(tmp_path))
    second = await runtime.start(spec(tmp_path))
    assert second.pid == first.pid
    assert port_of(second) == port_of(first)
    await runtime.wait_ready("i1", timeout=10)
    third = await runtime.start(spec(tmp_path))
    assert (third.pid, third.phase) == (first.pid, Phase.READY)
    assert len(await runtime.list()) == 1

    assert (await runtime.stop("i1", grace=5)).phase is Phase.ABSENT
    assert (await runtime.stop("i1", grace=5)).phase is Phase.ABSENT
    assert (await runtime.observe("i1")).phase is Phase.ABSENT


async def test_restarted_gateway_readopts_running_engine(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    started = await runtime.start(spec(tmp_path, labels={"owner": "alice"}))
    await runtime.wait_ready("i1", timeout=10)

    adopter = LocalRuntime(state_dir=state_dir)
    try:
        [seen] = await adopter.list()
        assert (seen.instance_id, seen.phase, seen.pid) == ("i1", Phase.READY, started.pid)
        assert port_of(seen) == port_of(started)
        assert seen.labels == {"owner": "alice"}
        observed = await adopter.observe("i1")
        assert (observed.phase, observed.pid) == (Phase.READY, started.pid)
        assert (await adopter.wait_ready("i1", timeout=1)).phase is Phase.READY
        assert (await adopter.start(spec(tmp_path))).pid == started.pid

        assert (await adopter.stop("i1", grace=5)).phase is Phase.ABSENT
        assert started.pid is not None
        assert not running(started.pid)
        assert (await runtime.observe("i1")).phase is Phase.ABSENT
    finally:
        await adopter.close()


async def test_adopter_reprobes_engine_not_yet_marked_ready(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    # The first gateway died between the engine's start and its readiness check.
    started = await runtime.start(spec(tmp_path))
    adopter = LocalRuntime(state_dir=state_dir)
    try:
        seen = await observe_until_not(adopter, "i1", Phase.STARTING)
        assert (seen.phase, seen.pid) == (Phase.READY, started.pid)
        [listed] = await adopter.list()
        assert listed.phase is Phase.READY
        # The first gateway's view agrees without probing again: the flag is on disk.
        assert (await runtime.observe("i1")).phase is Phase.READY
    finally:
        await adopter.close()


async def test_engine_exiting_before_ready(runtime: LocalRuntime, tmp_path: Path) -> None:
    await runtime.start(spec(tmp_path, "--exit-code", "3"))
    exited = await runtime.wait_ready("i1", timeout=10)
    assert exited.phase is Phase.EXITED
    assert exited.exit_code == 3
    assert "boom: the engine cannot start" in exited.log_tail
    assert exited.message == "engine exited with code 3"
    observed = await runtime.observe("i1")
    assert (observed.phase, observed.exit_code) == (Phase.EXITED, 3)
    assert "boom" in observed.log_tail


async def test_exit_seen_by_adopter_keeps_exit_code(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    started = await runtime.start(spec(tmp_path, "--exit-code", "3", "--wait-for", str(go)))
    await until(lambda: (tmp_path / "data" / "i1" / "engine.json").exists())
    adopter = LocalRuntime(state_dir=state_dir)
    try:
        assert (await adopter.observe("i1")).phase is Phase.STARTING
        waiter = asyncio.create_task(adopter.wait_ready("i1", timeout=10))
        go.touch()
        exited = await waiter
        assert (exited.phase, exited.exit_code, exited.pid) == (Phase.EXITED, 3, started.pid)
        assert "boom" in exited.log_tail
        [listed] = await adopter.list()
        assert (listed.phase, listed.exit_code) == (Phase.EXITED, 3)
    finally:
        await adopter.close()


async def test_exit_by_signal_is_reported_as_128_plus_n(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    engine_pid = engine_info(tmp_path / "data" / "i1")["pid"]
    assert isinstance(engine_pid, int)
    os.kill(engine_pid, signal.SIGKILL)
    exited = await observe_until_not(runtime, "i1", Phase.READY)
    assert (exited.phase, exited.exit_code) == (Phase.EXITED, 128 + signal.SIGKILL)
    assert "SIGKILL" in exited.message


async def test_readiness_timeout(runtime: LocalRuntime, tmp_path: Path) -> None:
    started = await runtime.start(spec(tmp_path, "--never-ready"))
    await until(lambda: (tmp_path / "data" / "i1" / "engine.json").exists())
    begin = time.monotonic()
    with pytest.raises(ReadinessTimeout) as caught:
        await runtime.wait_ready("i1", timeout=0.5)
    # It waited the whole time-out (how little longer is bench/runtime's figure).
    assert time.monotonic() - begin >= 0.5
    message = caught.value.message
    assert message.startswith(
        f"engine did not become ready within 0.5 s (readiness: GET /health on port {port_of(started)})"
    )
    assert "starting" in message  # the log tail
    # The engine is left alone: deciding what to do is the caller's business.
    assert (await runtime.observe("i1")).phase is Phase.STARTING


async def test_cancelling_wait_ready_leaves_engine_running(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    started = await runtime.start(spec(tmp_path, "--never-ready"))
    waiter = asyncio.create_task(runtime.wait_ready("i1", timeout=30))
    await until(lambda: (tmp_path / "data" / "i1" / "engine.json").exists())
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert started.pid is not None
    assert running(started.pid)
    assert (await runtime.observe("i1")).phase is Phase.STARTING


async def test_tcp_readiness(runtime: LocalRuntime, tmp_path: Path) -> None:
    check = ReadinessCheck(kind=ReadinessKind.TCP)
    await runtime.start(spec(tmp_path, readiness=check))
    assert (await runtime.wait_ready("i1", timeout=10)).phase is Phase.READY


async def test_missing_command(runtime: LocalRuntime, tmp_path: Path) -> None:
    missing = spec(tmp_path, command=("no-such-engine-xyz", "--port", "{port}"))
    with pytest.raises(LaunchError, match="'no-such-engine-xyz' was not found on this host"):
        await runtime.start(missing)
    assert (await runtime.observe("i1")).phase is Phase.ABSENT

    absolute = spec(tmp_path, command=(str(tmp_path / "nothing-here"),))
    with pytest.raises(LaunchError, match="nothing-here"):
        await runtime.start(absolute)


async def test_working_dir_that_cannot_be_made(runtime: LocalRuntime, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bad = spec(tmp_path, working_dir=str(tmp_path / "a-file" / "sub"))
    with pytest.raises(LaunchError, match="working directory"):
        await runtime.start(bad)


async def test_stop_kills_grandchildren(runtime: LocalRuntime, tmp_path: Path) -> None:
    await runtime.start(spec(tmp_path, "--grandchild"))
    await runtime.wait_ready("i1", timeout=10)
    grandchild = engine_info(tmp_path / "data" / "i1")["grandchild"]
    assert isinstance(grandchild, int)
    assert running(grandchild)
    await runtime.stop("i1", grace=5)
    assert not running(grandchild)


async def test_stop_sigkills_engine_that_ignores_sigterm(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    started = await runtime.start(spec(tmp_path, "--ignore-term"))
    await runtime.wait_ready("i1", timeout=10)
    engine_pid = engine_info(tmp_path / "data" / "i1")["pid"]
    assert isinstance(engine_pid, int)
    begin = time.monotonic()
    assert (await runtime.stop("i1", grace=0.3)).phase is Phase.ABSENT
    assert time.monotonic() - begin >= 0.3  # the grace was given (bench/runtime: how fast)
    assert not running(engine_pid)
    assert port_of(started) is not None
    assert await refuses_connections(port_of(started))


async def test_stop_of_engine_that_obeys_sigterm_does_not_wait_for_grace(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    # Waiting for the grace would outlast the test's time-out (bench/runtime measures the stop).
    assert (await runtime.stop("i1", grace=3600)).phase is Phase.ABSENT


async def test_a_stopped_engines_log_ends_with_the_engines_own_output(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """The wrapper outlives a stop's ``SIGTERM``; its shell's "Terminated" (about the engine's
    death) must not become the log's last line, which ``logs --tail 1`` shows."""
    await runtime.start(spec(tmp_path, "--ignore-term"))
    await runtime.wait_ready("i1", timeout=10)
    await runtime.stop("i1", grace=0.1)  # the engine dies of the forced kill
    await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    await runtime.stop("i1", grace=10)  # and of its SIGTERM
    log = await runtime.logs("i1")
    assert log.count(" starting\n") == 2
    assert "Terminated" not in log
    assert "Killed" not in log


async def test_log_is_bounded(runtime: LocalRuntime, tmp_path: Path, state_dir: Path) -> None:
    limit = 16 * 1024
    started = await runtime.start(spec(tmp_path, "--spew", "2000", log_max_bytes=limit))
    await runtime.wait_ready("i1", timeout=10)  # ~230 KB printed before it listens
    log = state_dir / "i1" / "engine.log"
    log1 = state_dir / "i1" / "engine.log.1"
    await runtime.observe("i1")
    assert log.stat().st_size <= limit
    assert log1.stat().st_size <= limit // 2

    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{port_of(started)}/spew/300")
    assert response.status_code == 200
    await runtime.observe("i1")
    assert log.stat().st_size <= limit
    assert log1.stat().st_size <= limit // 2
    assert b"\0" not in log.read_bytes()  # O_APPEND: writes went on at the start of the file
    tail = await runtime.logs("i1", tail_bytes=limit)
    assert "late spew done" in tail
    assert len(tail.encode()) <= limit


async def test_placeholders_and_environment(
    runtime: LocalRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIGC_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("OTHER_SETTING", "inherited")
    s = spec(
        tmp_path,
        "--tag={instance_id}@{port}",
        "a b 'c' \"d\" $HOME; `x` {other}",
        "--port",
        "{port}",
        env={
            "ENGINE_ID": "{instance_id}",
            "ENGINE_HOME": "{data_dir}/home",
            "ENGINE_URL": "http://127.0.0.1:{port}/",
            "AIGC_FROM_TEMPLATE": "explicit",
        },
        working_dir="{data_dir}/work",
        port_env="ENGINE_PORT",
    )
    started = await runtime.start(s)
    await runtime.wait_ready("i1", timeout=10)
    data_dir = tmp_path / "data" / "i1"
    info = engine_info(data_dir)
    argv = info["argv"]
    env = info["env"]
    assert isinstance(argv, list)
    assert isinstance(env, dict)
    assert argv[1:3] == ["--data-dir", str(data_dir)]
    assert f"--tag=i1@{port_of(started)}" in argv
    assert "a b 'c' \"d\" $HOME; `x` {other}" in argv  # verbatim through the sh wrapper
    assert argv[-2:] == ["--port", str(port_of(started))]
    assert env["ENGINE_ID"] == "i1"
    assert env["ENGINE_HOME"] == f"{data_dir}/home"
    assert env["ENGINE_URL"] == f"http://127.0.0.1:{port_of(started)}/"
    assert env["ENGINE_PORT"] == str(port_of(started))
    assert "PORT" not in env
    assert env["OTHER_SETTING"] == "inherited"
    assert "AIGC_SECRET_KEY" not in env
    assert env["AIGC_FROM_TEMPLATE"] == "explicit"
    assert info["cwd"] == str(data_dir / "work")


async def test_new_start_after_exit_clears_the_exit(
    runtime: LocalRuntime, tmp_path: Path, state_dir: Path
) -> None:
    await runtime.start(spec(tmp_path, "--exit-code", "3"))
    assert (await runtime.wait_ready("i1", timeout=10)).exit_code == 3
    restarted = await runtime.start(spec(tmp_path))
    assert restarted.phase is Phase.STARTING
    assert not (state_dir / "i1" / "exit_code").exists()
    ready = await runtime.wait_ready("i1", timeout=10)
    assert (ready.phase, ready.exit_code) == (Phase.READY, None)
    log = await runtime.logs("i1")
    assert log.index("boom") < log.index("engine restarted") < log.index("listening on")


async def test_restart_after_stop(runtime: LocalRuntime, tmp_path: Path) -> None:
    first = await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    await runtime.stop("i1", grace=5)
    second = await runtime.start(spec(tmp_path))
    assert second.pid != first.pid
    assert (await runtime.wait_ready("i1", timeout=10)).phase is Phase.READY


async def test_reused_pid_is_not_taken_for_the_engine(
    runtime: LocalRuntime, tmp_path: Path, state_dir: Path
) -> None:
    started = await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    record_file = state_dir / "i1" / "workload.json"
    record = json.loads(record_file.read_text())
    real_stamp = record["start_stamp"]
    record["start_stamp"] = real_stamp - 3600
    record_file.write_text(json.dumps(record))
    try:
        assert (await runtime.observe("i1")).phase is Phase.ABSENT
        await runtime.stop("i1", grace=1)  # must not signal the "other" process
        assert started.pid is not None
        assert running(started.pid)
    finally:
        record["start_stamp"] = real_stamp
        record_file.write_text(json.dumps(record))
    assert (await runtime.observe("i1")).phase is Phase.READY


async def test_forget(runtime: LocalRuntime, tmp_path: Path, state_dir: Path) -> None:
    await runtime.start(spec(tmp_path))
    with pytest.raises(Conflict):
        await runtime.forget("i1")
    await runtime.stop("i1", grace=5)
    await runtime.forget("i1")
    assert not (state_dir / "i1").exists()
    assert (await runtime.observe("i1")).phase is Phase.ABSENT
    assert await runtime.list() == []


async def test_suspend_is_not_supported(runtime: LocalRuntime) -> None:
    with pytest.raises(NotSupported):
        await runtime.suspend("i1")
    with pytest.raises(NotSupported):
        await runtime.resume("i1")


async def test_close_leaves_engines_running(state_dir: Path, tmp_path: Path) -> None:
    rt = LocalRuntime(state_dir=state_dir)
    started = await rt.start(spec(tmp_path))
    await rt.wait_ready("i1", timeout=10)
    await rt.close()
    assert started.pid is not None
    assert running(started.pid)
    other = LocalRuntime(state_dir=state_dir)
    try:
        await other.stop("i1", grace=5)
    finally:
        await other.close()


async def test_ready_is_detected_quickly(runtime: LocalRuntime, tmp_path: Path) -> None:
    workloads: list[Workload] = []
    for n in range(3):
        workloads.append(await runtime.start(spec(tmp_path, instance_id=f"q{n}")))
    ready = await asyncio.gather(
        *(runtime.wait_ready(w.instance_id, timeout=10) for w in workloads)
    )
    assert {w.phase for w in ready} == {Phase.READY}
    assert len({port_of(w) for w in ready}) == 3


# -- when the engine ended: what the ledger closes on (issue 12, items 12 and 14) ----------------

COARSE_CLOCK_S = 0.01
"""File times come from the kernel's coarse clock, up to one tick (1-10 ms) behind the time."""


def ended_by_itself(data_dir: Path) -> float:
    t: float = json.loads((data_dir / "ended.json").read_text())["t"]
    return t


async def test_a_stop_cut_short_by_a_killed_gateway_still_records_when_the_engine_ended(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    """The stop's SIGTERM reaches the whole process group, the wrapper included; the gateway that
    sent it is killed before the engine is gone. The wrapper must outlive the signal and record
    the engine's end, so the next gateway knows when it ended."""
    started = await runtime.start(spec(tmp_path, "--slow-stop", "0.3"))
    await runtime.wait_ready("i1", timeout=10)
    assert started.pid is not None
    os.killpg(started.pid, signal.SIGTERM)  # what stop() sends first; then its gateway dies
    adopter = LocalRuntime(state_dir=state_dir)
    try:
        exited = await observe_until_not(adopter, "i1", Phase.READY)
        engine_end = ended_by_itself(tmp_path / "data" / "i1")
        assert (exited.phase, exited.exit_code) == (Phase.EXITED, 0)
        assert exited.exited_at is not None
        assert engine_end - COARSE_CLOCK_S <= exited.exited_at < engine_end + 1
        stopped = await adopter.stop("i1", grace=5)
        assert (stopped.phase, stopped.exited_at) == (Phase.ABSENT, exited.exited_at)
        # Persisted: a third process reads the same end after the stop.
        assert (await LocalRuntime(state_dir=state_dir).observe("i1")).exited_at == (
            exited.exited_at
        )
    finally:
        await adopter.close()


async def test_a_stop_that_must_kill_returns_and_keeps_when_the_engine_ended(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    await runtime.start(spec(tmp_path, "--ignore-term"))
    await runtime.wait_ready("i1", timeout=10)
    before = time.time()
    stopped = await runtime.stop("i1", grace=0.3)
    after = time.time()
    assert stopped.phase is Phase.ABSENT and stopped.exited_at is not None
    assert before + 0.3 - COARSE_CLOCK_S <= stopped.exited_at <= after
    record = json.loads((state_dir / "i1" / "workload.json").read_text())
    assert record["ended_at"] == stopped.exited_at and record["stopped"]
    assert (await runtime.observe("i1")).exited_at == stopped.exited_at


async def test_the_forced_kill_spares_the_wrapper_so_the_end_is_recorded(
    runtime: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    """A stop's two signals, as sent by a gateway killed right after them: the engine ignores
    SIGTERM and dies of the SIGKILL; the wrapper outlives both and records the end."""
    started = await runtime.start(spec(tmp_path, "--ignore-term"))
    await runtime.wait_ready("i1", timeout=10)
    assert started.pid is not None
    os.killpg(started.pid, signal.SIGTERM)
    before = time.time()
    assert procs.kill_group_but(started.pid, keep=started.pid) == 1
    adopter = LocalRuntime(state_dir=state_dir)
    try:
        exited = await observe_until_not(adopter, "i1", Phase.READY)
        assert (exited.phase, exited.exit_code) == (Phase.EXITED, 128 + signal.SIGKILL)
        assert exited.exited_at is not None and exited.exited_at >= before - COARSE_CLOCK_S
    finally:
        await adopter.close()


async def test_a_killed_wrapper_is_reported_and_its_engine_can_be_stopped(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """``kill -9`` of the wrapper alone leaves an engine whose exit nothing can record: it is
    reported as exited, with the reason, while the engine still runs; a stop ends it and says
    when."""
    started = await runtime.start(spec(tmp_path))
    await runtime.wait_ready("i1", timeout=10)
    engine_pid = engine_info(tmp_path / "data" / "i1")["pid"]
    assert isinstance(engine_pid, int) and started.pid is not None
    os.kill(started.pid, signal.SIGKILL)
    seen = await observe_until_not(runtime, "i1", Phase.READY)
    assert seen.phase is Phase.EXITED and seen.exit_code is None
    assert "engine supervisor killed" in seen.message
    assert running(engine_pid)
    [listed] = await runtime.list()
    assert listed.phase is Phase.EXITED
    before = time.time()
    stopped = await runtime.stop("i1", grace=5)
    assert not running(engine_pid)
    after = time.time()
    assert stopped.exited_at is not None and before <= stopped.exited_at <= after
