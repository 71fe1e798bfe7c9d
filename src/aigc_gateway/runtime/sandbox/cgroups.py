"""One cgroup per engine: memory, CPU and process-count limits, OOM reports, and a kill of
everything inside (cgroup v2 where the host has it, v1 where only v1 is mounted).

The pure half (:func:`plan`, :func:`join_argv`) says which folders and files; the rest applies it.

- Layout: v2 is detected by ``<root>/cgroup.controllers`` (the unified hierarchy at the root; a
  hybrid host's ``unified/`` with no controllers counts as v1). An engine's cgroup is
  ``<root>/aigc/<name>`` (v2) or ``<root>/<controller>/aigc/<name>`` for each v1 controller of
  :data:`V1_CONTROLLERS` the host mounts (co-mounted ones, e.g. ``cpu,cpuacct``, once).
- The engine joins before it is executed: :func:`join_argv` is a ``sh`` prefix that writes its
  own pid into every ``cgroup.procs`` and then ``exec``\\ s the sandbox. It is placed *after* the
  runtime's exit-status wrapper, which thus stays outside and survives :func:`kill_all`.
- :func:`kill_all` leaves nothing running: v2 writes ``cgroup.kill``; v1 freezes the cgroup
  (``freezer.state``), SIGKILLs every member, then thaws it, so a process that forks as fast as it
  can (or a daemon that double-forks) cannot slip out between the listing and the signal.
- :func:`oom_kills` reads the kernel's count of OOM kills in the cgroup (v2 ``memory.events``,
  v1 ``memory.oom_control``), which tells an engine killed by its memory limit from other ends.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "JOIN_SCRIPT",
    "PARENT",
    "V1_CONTROLLERS",
    "Cgroup",
    "CgroupError",
    "CgroupLayout",
    "CgroupVersion",
    "Limits",
    "Write",
    "cpu_usage_s",
    "create",
    "detect",
    "join_argv",
    "kill_all",
    "leftovers",
    "members",
    "oom_kills",
    "plan",
    "remove",
    "signal_all",
]

PARENT = "aigc"
"""The folder under which every engine's cgroup lives (one per hierarchy)."""
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
JOIN_SCRIPT = (
    'for f do [ "$f" = -- ] && break; '
    'echo $$ >"$f" || { echo "aigc: cannot join cgroup $f" >&2; exit 125; }; shift; done; '
    'shift; exec "$@"'
)
"""``sh -c JOIN_SCRIPT join PROCS_FILE... -- CMD...``: join each cgroup, then become ``CMD``."""
FREEZE_WAIT_S = 2.0


class CgroupError(OSError):
    """A cgroup could not be made or limited; the message names the file."""


class CgroupVersion(enum.IntEnum):
    V1 = 1
    """Legacy hierarchies, one per controller (``/sys/fs/cgroup/memory``, ...)."""
    V2 = 2
    """The unified hierarchy (``/sys/fs/cgroup/cgroup.controllers``)."""


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where this host's cgroups are and which controllers it offers."""

    version: CgroupVersion
    root: str
    mounts: Mapping[str, str]
    """v1: controller -> its hierarchy's folder (resolved); v2: every controller -> ``root``."""

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.mounts)

    def missing(self) -> list[str]:
        """The controllers the sandbox needs that this host lacks."""
        wanted = V1_CONTROLLERS if self.version is CgroupVersion.V1 else V2_CONTROLLERS
        return [c for c in wanted if c not in self.mounts]


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int | None = None
    cpu: float | None = None
    """CPU cores (0.5: half of one), as a CFS quota over :data:`CPU_PERIOD_US`."""
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One engine's cgroup, as the runtime records it."""

    version: int
    dirs: tuple[str, ...]
    """Its folders: one (v2), or one per v1 hierarchy."""
    memory_dir: str | None = None
    cpuacct_dir: str | None = None
    freezer_dir: str | None = None

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)


@dataclass(frozen=True, slots=True)
class Write:
    path: str
    value: str
    required: bool = True
    """An optional write (swap limits) may fail where the kernel lacks the file."""


def detect(root: Path = Path("/sys/fs/cgroup")) -> CgroupLayout | None:
    """This host's layout, or ``None`` where no usable cgroup hierarchy is mounted."""
    unified = root / "cgroup.controllers"
    if unified.is_file():
        names = unified.read_text().split()
        return CgroupLayout(CgroupVersion.V2, str(root), {n: str(root) for n in names})
    mounts = {}
    for name in V1_CONTROLLERS:
        folder = root / name
        if (folder / "cgroup.procs").is_file():
            mounts[name] = str(folder.resolve())
    return CgroupLayout(CgroupVersion.V1, str(root), mounts) if mounts else None


def plan(
    layout: CgroupLayout, name: str, limits: Limits, *, scope: str = ""
) -> tuple[Cgroup, list[Write]]:
    """The cgroup for engine ``name`` and the files to write to limit it (pure). ``scope``
    (one gateway's folder under :data:`PARENT`) keeps the engines of gateways sharing a host
    apart: same names never meet, and each lists only its own leftovers."""
    if layout.version is CgroupVersion.V2:
        return _plan_v2(layout, name, limits, scope)
    return _plan_v1(layout, name, limits, scope)


def _plan_v2(
    layout: CgroupLayout, name: str, limits: Limits, scope: str
) -> tuple[Cgroup, list[Write]]:
    folder = os.path.join(layout.root, PARENT, scope, name)
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in layout.mounts)
    writes = [
        Write(os.path.join(layout.root, "cgroup.subtree_control"), enable, required=False),
        Write(os.path.join(layout.root, PARENT, "cgroup.subtree_control"), enable),
    ]
    if scope:
        writes.append(
            Write(os.path.join(layout.root, PARENT, scope, "cgroup.subtree_control"), enable)
        )
    if limits.memory_bytes is not None:
        writes.append(Write(os.path.join(folder, "memory.max"), str(limits.memory_bytes)))
        writes.append(Write(os.path.join(folder, "memory.swap.max"), "0", required=False))
    if limits.cpu is not None:
        writes.append(
            Write(os.path.join(folder, "cpu.max"), f"{_quota(limits.cpu)} {CPU_PERIOD_US}")
        )
    if limits.pids is not None:
        writes.append(Write(os.path.join(folder, "pids.max"), str(limits.pids)))
    cgroup = Cgroup(2, (folder,), memory_dir=folder, cpuacct_dir=folder, freezer_dir=folder)
    return cgroup, writes


def _plan_v1(
    layout: CgroupLayout, name: str, limits: Limits, scope: str
) -> tuple[Cgroup, list[Write]]:
    dirs: dict[str, str] = {}
    for controller, mount in layout.mounts.items():
        dirs[controller] = os.path.join(mount, PARENT, scope, name)
    writes: list[Write] = []
    memory, cpu, pids = dirs.get("memory"), dirs.get("cpu"), dirs.get("pids")
    if limits.memory_bytes is not None and memory is not None:
        value = str(limits.memory_bytes)
        writes.append(Write(os.path.join(memory, "memory.limit_in_bytes"), value))
        writes.append(Write(os.path.join(memory, "memory.memsw.limit_in_bytes"), value, False))
    if limits.cpu is not None and cpu is not None:
        writes.append(Write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US)))
        writes.append(Write(os.path.join(cpu, "cpu.cfs_quota_us"), str(_quota(limits.cpu))))
    if limits.pids is not None and pids is not None:
        writes.append(Write(os.path.join(pids, "pids.max"), str(limits.pids)))
    cgroup = Cgroup(
        1,
        tuple(dict.fromkeys(dirs.values())),  # co-mounted controllers share one folder
        memory_dir=memory,
        cpuacct_dir=dirs.get("cpuacct"),
        freezer_dir=dirs.get("freezer"),
    )
    return cgroup, writes


def _quota(cpu: float) -> int:
    return max(1000, round(cpu * CPU_PERIOD_US))


def join_argv(cgroup: Cgroup, shell: str = "/bin/sh") -> list[str]:
    """The prefix that moves the command into ``cgroup`` before it starts (see the docstring)."""
    return [shell, "-c", JOIN_SCRIPT, "aigc-join", *cgroup.procs_files, "--"]


# -- applying -------------------------------------------------------------------------------


def create(cgroup: Cgroup, writes: Iterable[Write]) -> None:
    """Make the cgroup's folders and write its limits; raises :class:`CgroupError`."""
    writes = list(writes)
    for folder in cgroup.dirs:
        _mkdir(os.path.dirname(folder))
    for write in writes:  # v2: enable the controllers on the parents first
        if write.path.endswith("cgroup.subtree_control"):
            _write(write)
    for folder in cgroup.dirs:
        _mkdir(folder)
    for write in writes:
        if not write.path.endswith("cgroup.subtree_control"):
            _write(write)


def _mkdir(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise CgroupError(exc.errno, f"cannot create cgroup {folder}: {exc.strerror}") from exc


def _write(write: Write) -> None:
    try:
        with open(write.path, "w") as f:
            f.write(write.value)
    except OSError as exc:
        if write.required:
            raise CgroupError(
                exc.errno, f"cannot write {write.value!r} to {write.path}: {exc.strerror}"
            ) from exc


def members(cgroup: Cgroup) -> set[int]:
    """Pids of every process in the cgroup (any of its folders); empty when it is gone."""
    found: set[int] = set()
    for path in cgroup.procs_files:
        with contextlib.suppress(OSError):
            found.update(int(p) for p in Path(path).read_text().split())
    return found


def signal_all(cgroup: Cgroup, sig: signal.Signals, *, skip: Callable[[int], bool]) -> int:
    """Send ``sig`` to each member for which ``skip(pid)`` is false; returns how many."""
    sent = 0
    for pid in members(cgroup):
        if not skip(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent += 1
    return sent


def kill_all(cgroup: Cgroup) -> None:
    """SIGKILL everything in the cgroup so that nothing can escape (see the module docstring).
    Returns once signalled; the members are gone when :func:`members` is empty."""
    if cgroup.version == CgroupVersion.V2:
        kill = os.path.join(cgroup.dirs[0], "cgroup.kill")
        try:
            with open(kill, "w") as f:
                f.write("1")
            return
        except OSError:
            pass  # kernels before 5.14: fall back to signalling each member
    frozen = _freeze(cgroup, True)
    try:
        for _ in range(100):
            if signal_all(cgroup, signal.SIGKILL, skip=lambda _pid: False) == 0:
                break
            if frozen:
                break  # a frozen cgroup cannot fork: one pass got everything
    finally:
        if frozen:
            _freeze(cgroup, False)


def _freeze(cgroup: Cgroup, on: bool) -> bool:
    """Freeze (or thaw) the cgroup; whether it is frozen now."""
    if cgroup.freezer_dir is None:
        return False
    if cgroup.version == CgroupVersion.V2:
        path, value, done = "cgroup.freeze", "1" if on else "0", "frozen 1" if on else None
    else:
        path, value, done = "freezer.state", "FROZEN" if on else "THAWED", "FROZEN" if on else None
    target = os.path.join(cgroup.freezer_dir, path)
    try:
        with open(target, "w") as f:
            f.write(value)
    except OSError:
        return False
    if done is None:
        return False
    return _wait_frozen(cgroup, done)


def _wait_frozen(cgroup: Cgroup, done: str) -> bool:
    assert cgroup.freezer_dir is not None
    state = "freezer.state" if cgroup.version == CgroupVersion.V1 else "cgroup.events"
    deadline = time.monotonic() + FREEZE_WAIT_S
    delay = 0.0005
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if done in Path(cgroup.freezer_dir, state).read_text():
                return True
        time.sleep(delay)  # freezing takes microseconds to milliseconds; bounded above
        delay = min(delay * 2, 0.02)
    return False


def remove(cgroup: Cgroup) -> bool:
    """Remove the cgroup's folders; ``False`` if one still has members (nothing is forced)."""
    gone = True
    for folder in cgroup.dirs:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
            gone = False
            continue
        # The gateway's scope folder (see plan), once its last engine is gone; another
        # engine's cgroup in it keeps it (an rmdir of a folder with children fails).
        scope = os.path.dirname(folder)
        if os.path.basename(scope) != PARENT:
            with contextlib.suppress(OSError):
                os.rmdir(scope)
    return gone


def oom_kills(cgroup: Cgroup) -> int:
    """How many processes the kernel killed in this cgroup for its memory limit."""
    if cgroup.memory_dir is None:
        return 0
    name = "memory.events" if cgroup.version == CgroupVersion.V2 else "memory.oom_control"
    try:
        text = Path(cgroup.memory_dir, name).read_text()
    except OSError:
        return 0
    return _field(text, "oom_kill")


def cpu_usage_s(cgroup: Cgroup) -> float | None:
    """CPU time the cgroup's processes used, in seconds; ``None`` if unknown."""
    if cgroup.cpuacct_dir is None:
        return None
    try:
        if cgroup.version == CgroupVersion.V2:
            text = Path(cgroup.cpuacct_dir, "cpu.stat").read_text()
            return _field(text, "usage_usec") / 1e6
        return int(Path(cgroup.cpuacct_dir, "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def leftovers(layout: CgroupLayout, *, scope: str = "") -> list[str]:
    """Names of the engine cgroups (of ``scope``, see :func:`plan`) that exist now, in any
    hierarchy (sorted, once each)."""
    names: set[str] = set()
    for mount in set(layout.mounts.values()):
        parent = Path(mount, PARENT, scope)
        with contextlib.suppress(OSError):
            names.update(e.name for e in os.scandir(parent) if e.is_dir())
    return sorted(names)
