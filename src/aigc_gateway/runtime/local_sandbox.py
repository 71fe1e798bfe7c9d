"""The local runtime's sandboxed engines: stopping a whole cgroup, probing over the Unix socket,
telling an out-of-memory kill, and choosing whether to sandbox at all.

A sandboxed engine's process tree is ``wrapper sh`` (outside the cgroup; records the exit) ->
``bwrap`` (in the cgroup; its own process group is the wrapper's) -> ``bwrap`` as the PID
namespace's init -> ``setpriv`` -> ``sh`` -> the engine (+ ``socat``). A stop must not signal the
two ``bwrap`` processes politely: killing the outer one kills the sandbox at once (it dies with
its parent), which would turn every graceful stop into a kill. So ``SIGTERM`` goes to every
cgroup member that is not bwrap; when the engine ends, init ends, the namespace's processes are
killed by the kernel, and bwrap passes the engine's status (``128 + N`` for a signal) to the
wrapper. After the grace, the whole cgroup is killed (:func:`~.sandbox.cgroups.kill_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aigc_gateway.runtime.sandbox import cgroups
from aigc_gateway.runtime.sandbox.detect import NOT_ISOLATED, SandboxSupport

__all__ = [
    "Decision",
    "SandboxMode",
    "choose",
    "is_program",
    "oom_message",
    "probe_tcp_over_socket",
    "terminate_cgroup",
    "wait_cgroup_empty",
]

FORWARDED_CONNECT_WAIT_S = 0.05
"""How long a TCP readiness probe through the forwarder waits to see the bridge hang up."""


class SandboxMode(enum.StrEnum):
    AUTO = "auto"
    """Sandbox where the host supports it; elsewhere refuse to start engines, except in
    ``--dev`` mode, which runs them unsandboxed with a loud warning."""
    ON = "on"
    """Always sandbox; where the host cannot, engine starts fail saying what is missing."""
    OFF = "off"
    """Never sandbox (the admin's explicit choice); every surface warns."""


@dataclass(frozen=True, slots=True)
class Decision:
    sandboxed: bool
    refusal: str | None = None
    """Set when engines must not start at all: the LaunchError message."""
    warning: str | None = None
    """Set when engines run unsandboxed: what every surface says."""


def choose(mode: SandboxMode, support: SandboxSupport, *, dev: bool) -> Decision:
    """Whether engines run sandboxed here (pure)."""
    missing = support.missing()
    if mode is SandboxMode.OFF:
        return Decision(False, warning=f"{NOT_ISOLATED} (sandbox: off)")
    if not missing:
        return Decision(True)
    why = "; ".join(missing)
    if mode is SandboxMode.AUTO and dev:
        return Decision(False, warning=f"{NOT_ISOLATED} (dev mode, no sandbox here: {why})")
    return Decision(
        False,
        refusal=f"engines cannot be sandboxed on this host: {why}. Install what is missing, "
        "or set sandbox: off to run engines unsandboxed (they are then NOT isolated from each "
        "other or from the gateway)",
        warning=f"{NOT_ISOLATED}: engine starts are refused until the sandbox works ({why})",
    )


def is_program(pid: int, program: str) -> bool:
    """Whether process ``pid`` runs the executable ``program`` (a real path)."""
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == program
    except OSError:
        return False


def wrapper_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_cgroup_empty(cgroup: cgroups.Cgroup, limit_s: float) -> bool:
    """Poll (short, growing interval) until the cgroup has no member; ``False`` after
    ``limit_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    delay = 0.002
    while cgroups.members(cgroup):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return True


async def terminate_cgroup(
    cgroup: cgroups.Cgroup,
    *,
    bwrap: str,
    grace: float,
    kill_wait_s: float,
    before_kill: Callable[[], None] = lambda: None,
) -> tuple[float | None, bool]:
    """Stop everything in ``cgroup`` (see the module docstring): ``SIGTERM`` to all but bwrap,
    up to ``grace`` seconds, then (after calling ``before_kill``, when a grace ran out) kill the
    cgroup. Returns when it was seen empty (``None`` if it was empty already) and whether it is
    empty now."""
    if not cgroups.members(cgroup):
        return None, True
    real = os.path.realpath(bwrap)
    cgroups.signal_all(cgroup, signal.SIGTERM, skip=lambda pid: is_program(pid, real))
    if grace > 0 and await wait_cgroup_empty(cgroup, grace):
        return time.time(), True
    if grace > 0:
        before_kill()
    cgroups.kill_all(cgroup)
    empty = await wait_cgroup_empty(cgroup, kill_wait_s)
    return time.time(), empty


async def probe_tcp_over_socket(path: str, *, forwarded: bool) -> bool:
    """A TCP readiness check through the engine's socket. Through the forwarder a connect
    always succeeds (socat accepts, then dials the engine): the engine is ready unless the
    bridge hangs up at once."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        if forwarded:
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(1), FORWARDED_CONNECT_WAIT_S)
                if not data:
                    return False
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def oom_message(cgroup: cgroups.Cgroup, memory_bytes: int | None) -> str | None:
    """ "out of memory (limit 16 GiB)" when the kernel killed something in the cgroup for its
    memory limit, else ``None``."""
    if cgroups.oom_kills(cgroup) == 0:
        return None
    if memory_bytes is None:
        return "out of memory"
    gib = memory_bytes / (1 << 30)
    limit = f"{gib:.3g} GiB" if gib >= 1 else f"{memory_bytes / (1 << 20):.4g} MiB"
    return f"out of memory (limit {limit})"


PASSED_THROUGH = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONPATH")
"""What a sandboxed engine keeps of the gateway's own environment (and every ``LC_*``): how
to find programs and speak the locale. Nothing else: a gateway's environment holds its
operator's credentials (database, cloud, proxies) whatever their names."""


def engine_environment(
    rendered: Mapping[str, str], *, template: Mapping[str, str], port_env: str | None
) -> dict[str, str]:
    """The environment of a sandboxed engine, from what the runtime ``rendered`` for it (the
    gateway's environment plus the template's): the template's own variables, the port
    variable, the GPU variables the runtime set, and :data:`PASSED_THROUGH` of the rest."""
    keep = set(template) | {port_env or "", "CUDA_VISIBLE_DEVICES"}
    return {
        k: v for k, v in rendered.items() if k in keep or k in PASSED_THROUGH or k.startswith("LC_")
    }
