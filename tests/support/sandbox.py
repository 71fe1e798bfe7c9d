"""Sandboxed local runtimes for tests: the real bubblewrap, cgroups and uids of this host."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aigc_gateway.runtime.base import EngineResources, LaunchSpec, ReadinessCheck
from aigc_gateway.runtime.local import LocalRuntime
from aigc_gateway.runtime.sandbox import detect
from aigc_gateway.runtime.sandbox.launch import Sandbox, SandboxConfig
from aigc_gateway.runtime.sandbox.uids import UidRange

HOSTILE = str(Path(__file__).resolve().parents[1] / "engines" / "hostile.py")
TEST_UIDS = UidRange(231000, 231999)
"""Tests use their own corner of the default range."""


def sandboxed_runtime(
    state_dir: Path, *, hidden: tuple[str, ...] = (), **config: object
) -> LocalRuntime:
    """A local runtime that starts every engine sandboxed (the host must support it)."""
    settings = SandboxConfig(uid_range=TEST_UIDS, hidden=(str(state_dir), *hidden), **config)  # type: ignore[arg-type]
    sandbox = Sandbox(settings, detect.probe(), state_dir=state_dir)
    return LocalRuntime(state_dir=state_dir, sandbox=sandbox)


@contextlib.asynccontextmanager
async def running_sandboxed(state_dir: Path, **config: object) -> AsyncIterator[LocalRuntime]:
    """:func:`sandboxed_runtime`, every engine it ran stopped and forgotten on the way out."""
    rt = sandboxed_runtime(state_dir, **config)  # type: ignore[arg-type]
    try:
        yield rt
    finally:
        for w in await rt.list():
            await rt.stop(w.instance_id, grace=0.5)
            await rt.forget(w.instance_id)
        await rt.close()


def hostile_spec(
    tmp_path: Path,
    *args: str,
    instance_id: str,
    owner: str,
    **changes: object,
) -> LaunchSpec:
    base = LaunchSpec(
        instance_id=instance_id,
        command=(sys.executable, HOSTILE, "--data-dir", "{data_dir}", *args),
        data_dir=str(tmp_path / "volumes" / owner / instance_id),
        readiness=ReadinessCheck(path="/"),
        labels={"owner": owner},
        resources=EngineResources(cpu=1, memory_mib=512),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
