"""Process helpers for the local runtime: spawning, liveness, process groups, exit watching, logs.

Everything here is about operating-system processes and their output files, and knows nothing of
instances or records (see :mod:`aigc_gateway.runtime.local` for those).

- :func:`spawn` starts an engine command through a tiny ``/bin/sh`` wrapper, in a new session (so
  the engine and everything it starts share one process group), with stdout and stderr on a log
  file. The wrapper waits for the command and writes its exit status to a file, so the status is
  known even when the engine ends while no gateway is running.
- Children spawned by this gateway process are reaped by one small daemon thread each (blocked in
  ``waitpid``, like asyncio's threaded child watcher), so an engine that ends leaves no zombie. The
  table is process-wide on purpose: an engine outlives the runtime object (and event loop) that
  started it, and must never be killed because a handle to it was garbage-collected.
- Liveness checks compare the process start time with the recorded one, so a reused pid does not
  pass for the engine. On Linux that is the kernel's start time since boot, read from ``/proc``
  (psutil's create time adds the boot time, which moves when the clock is stepped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import psutil

__all__ = [
    "SHELL",
    "WRAPPER_SCRIPT",
    "boot_id",
    "descendants_outside_group",
    "describe_exit",
    "find_executable",
    "group_alive",
    "group_is_ours",
    "group_members",
    "kill_group_but",
    "last_lines",
    "pick_free_port",
    "process_alive",
    "process_create_time",
    "process_stamp",
    "read_log_tail",
    "rotate_log",
    "signal_group",
    "signal_processes",
    "spawn",
    "wait_gone",
    "watch_exit",
]

SHELL = "/bin/sh"
WRAPPER_SCRIPT = (
    'trap : TERM INT HUP; exec 3>&2 2>/dev/null; f=$1; shift; (exec "$@" 2>&3 3>&-); echo $? >"$f"'
)
"""``sh -c WRAPPER_SCRIPT argv0 EXIT_FILE CMD ARGS...``: run the command, then record its status.

The exit file is passed as an argument (not in the environment) so the engine does not inherit it.
An engine killed by signal N is reported by the shell as ``128 + N``. The file's modification time
is when the engine ended: the ledger closes its interval there, even when no gateway was running.

The shell is the process group leader, and a stop signals the whole group. It traps ``TERM``,
``INT`` and ``HUP`` with a no-op so that it outlives the engine and still writes the status (a
trap, not an ignore: an ignored signal would be inherited by the engine, a trapped one is reset to
the default on ``exec``; and a trap runs only once the foreground command has ended). ``SIGKILL``
cannot be trapped, so the forced kill of a stop spares the wrapper (:func:`kill_group_but`).

The shell's own stderr goes to ``/dev/null`` and the command's to the log (through fd 3, in a
subshell that execs the command, so the engine is still the wrapper's child): a shell that
outlives its command reports its death by a signal ("Terminated") on the stderr it has while it
waits, which would otherwise be the last line of every stopped engine's log.
"""

_PROC = Path("/proc")
_HAVE_PROC = (_PROC / "self" / "stat").is_file()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _HAVE_PROC else 100
_STAMP_TOLERANCE_S = 0.001 if _HAVE_PROC else 1.0
"""Start stamps from ``/proc`` are exact; psutil's epoch create times move with the clock."""

_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def spawn(
    argv: Sequence[str],
    *,
    exit_file: Path,
    log_file: Path,
    cwd: str,
    env: Mapping[str, str],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` under the exit-status wrapper in a new session; raises :class:`OSError`.

    The log file is opened ``O_APPEND`` and handed to the child as stdout and stderr: the child
    writes to it directly, so its output keeps flowing when the gateway is gone, and the log can be
    truncated under it (the next write lands at the new end).
    """
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        proc = subprocess.Popen(
            [SHELL, "-c", WRAPPER_SCRIPT, "aigc-engine", str(exit_file), *argv],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    with _children_lock:
        _children[proc.pid] = proc
    threading.Thread(target=_reap, args=(proc,), name=f"aigc-reap-{proc.pid}", daemon=True).start()
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait()
    finally:
        with _children_lock:
            _children.pop(proc.pid, None)


def find_executable(program: str, *, cwd: str, path: str | None) -> str | None:
    """The absolute path that running ``program`` would execute, or ``None`` if there is none."""
    if not program:
        return None
    if os.sep in program:
        candidate = program if os.path.isabs(program) else os.path.join(cwd, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
        return None
    found = shutil.which(program, path=path)
    return os.path.abspath(found) if found is not None else None


def pick_free_port(host: str, avoid: Collection[int] = ()) -> int:
    """A port on ``host`` that nothing listens on now (the kernel's pick), not one of ``avoid``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    port = 0
    for _ in range(64):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    return port


def boot_id() -> str:
    """Names the current boot of this host: records from an earlier boot name no live process."""
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return f"boot-time:{psutil.boot_time():.0f}"


def _read_stat(pid: int) -> tuple[bytes, float] | None:
    """State letter and start time (seconds since boot) of ``pid`` from ``/proc``, or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # fields[0] is field 3 of proc(5)
    return fields[0], int(fields[19]) / _CLOCK_TICKS


def process_create_time(pid: int) -> float | None:
    """When ``pid`` was created, seconds since the epoch (psutil; moves with clock changes)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_stamp(pid: int) -> float | None:
    """When ``pid`` started, as a value that names that process for good: seconds since boot
    (from ``/proc``, immune to clock changes), else psutil's create time. ``None`` if gone."""
    if _HAVE_PROC:
        stat = _read_stat(pid)
        return stat[1] if stat is not None else None
    return process_create_time(pid)


def _same_process(actual: float, recorded: float | None) -> bool:
    return recorded is None or abs(actual - recorded) <= _STAMP_TOLERANCE_S


def process_alive(pid: int, stamp: float | None) -> bool:
    """Whether ``pid`` runs (not a zombie) and is the process of start ``stamp`` (a reused pid
    is not)."""
    if _HAVE_PROC:
        stat = _read_stat(pid)
        return stat is not None and _same_process(stat[1], stamp) and stat[0] not in (b"Z", b"X")
    try:
        proc = psutil.Process(pid)
        return _same_process(proc.create_time(), stamp) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def group_is_ours(pgid: int, stamp: float | None) -> bool:
    """Whether process group ``pgid`` can only be the one our leader (started at ``stamp``) made.

    A process group id is the pid of the process that created the group, and Linux keeps that pid
    number reserved while the group has members. So if no process ``pgid`` exists, any group
    ``pgid`` still around is ours; if one exists, it must be our leader (same start stamp).
    """
    actual = process_stamp(pgid)
    return actual is None or _same_process(actual, stamp)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) members of process group ``pgid``."""
    if not _HAVE_PROC:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        return found
    members = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(os.path.join(entry.path, "stat"), "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                members.append(int(entry.name))
    return members


def _has_live_member(pgid: int) -> bool:
    """Whether a member of the group is not a zombie (an orphan may stay a zombie for long under
    an init that does not reap)."""
    return bool(group_members(pgid))


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    if not _group_exists(pgid):
        return False
    if process_alive(pgid, None):  # the leader runs (a session leader cannot leave its group)
        return True
    return _has_live_member(pgid)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_group_but(pgid: int, keep: int) -> int:
    """``SIGKILL`` every member of group ``pgid`` except process ``keep`` (the exit-status
    wrapper, so that it can still record the engine's end); returns how many were signalled."""
    killed = 0
    for pid in group_members(pgid):
        if pid != keep:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def descendants_outside_group(pid: int, pgid: int) -> list[psutil.Process]:
    """Descendants of ``pid`` that moved to another process group (e.g. a terminal's shell)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    outside = []
    for child in children:
        with contextlib.suppress(OSError):
            if os.getpgid(child.pid) != pgid:
                outside.append(child)
    return outside


def signal_processes(procs: Sequence[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the create time: a reused pid is left alone


def _proc_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def wait_gone(pgid: int, others: Sequence[psutil.Process], limit_s: float) -> bool:
    """Poll (with a short, growing interval) until the group and ``others`` are gone.

    Returns ``False`` if something is still alive after ``limit_s`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    delay = 0.002
    while True:
        if not group_alive(pgid) and not any(_proc_alive(p) for p in others):
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def watch_exit(pid: int, stamp: float | None) -> Iterator[asyncio.Future[None] | None]:
    """A future that completes as soon as process ``pid`` ends, or ``None`` if the OS cannot tell.

    Uses a pidfd (Linux 5.3+) registered with the running loop; works for processes that are not
    our children (adopted engines) too. Leaving the block unregisters it; the process is untouched.
    """
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        yield None
        return
    fut: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(fd)
        if not fut.done():
            fut.set_result(None)

    try:
        # Checked after opening: if the pid was reused the pidfd names another process.
        if process_alive(pid, stamp):
            loop.add_reader(fd, readable)
        else:
            fut.set_result(None)
        yield fut
    finally:
        loop.remove_reader(fd)
        os.close(fd)
        if not fut.done():
            fut.cancel()


def describe_exit(code: int) -> str:
    message = f"engine exited with code {code}"
    if code > 128:
        with contextlib.suppress(ValueError):
            message += f" (killed by {signal.Signals(code - 128).name})"
    return message


def read_log_tail(log: Path, rotated: Path, tail_bytes: int, *, lines: int | None = None) -> str:
    """The end of an engine's output, over ``rotated`` (older) and ``log``: its last ``lines``
    lines (all lines when None) within its last ``tail_bytes`` bytes, the cap that bounds what is
    read whatever the lines' length."""
    chunks: list[bytes] = []
    need = tail_bytes
    for path in (log, rotated):
        if need <= 0:
            break
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - need))
                data = f.read(need)
        except FileNotFoundError:
            continue
        chunks.append(data)
        need -= len(data)
    text = b"".join(reversed(chunks)).decode("utf-8", errors="replace")
    return text if lines is None else last_lines(text, lines)


def last_lines(text: str, n: int) -> str:
    """The last ``n`` lines of ``text`` (a final line without a newline counts as one)."""
    if n <= 0:
        return ""
    kept = text.splitlines(keepends=True)[-n:]
    return "".join(kept)


def rotate_log(log: Path, rotated: Path, max_bytes: int) -> None:
    """Keep a log bounded: past ``max_bytes``, its last half replaces ``rotated``, and the log is
    truncated to zero.

    The engine's descriptor is ``O_APPEND``, so after the truncation its writes continue at the
    start of the file. Output written between the read and the truncation is lost (a few bytes).
    """
    if max_bytes <= 0:
        return
    try:
        if log.stat().st_size <= max_bytes:
            return
    except FileNotFoundError:
        return
    keep = max_bytes // 2
    with open(log, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(max(0, end - keep))
        data = f.read()[-keep:] if keep > 0 else b""
        f.truncate(0)
    tmp = rotated.with_name(f".{rotated.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, rotated)
