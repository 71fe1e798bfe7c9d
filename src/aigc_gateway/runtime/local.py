"""The local runtime: each engine is a process on this host, outliving the gateway process.

Engines must survive a gateway restart (a restarted gateway re-adopts them), so nothing about a
running engine may live only in this process's memory or depend on it:

- The engine runs in its own session and process group, started through a tiny ``/bin/sh``
  wrapper (:data:`~aigc_gateway.runtime.local_procs.WRAPPER_SCRIPT`) that waits for it and writes
  its exit status to a file, whose modification time is when the engine ended. Without the wrapper
  an engine ending while no gateway runs would leave no exit code and no end time anywhere. The
  wrapper outlives a stop's signals (it traps ``SIGTERM``, and the forced kill spares it), so even
  a stop whose gateway was killed half-way leaves the end time. A shell costs about a millisecond;
  a Python supervisor would cost tens.
- A wrapper killed on its own (``kill -9`` of its pid) leaves an engine nobody can see end: it is
  reported as exited ("engine supervisor killed") while the engine still runs, so the controller
  stops it and the ledger closes when it is gone.
- Its stdout and stderr go straight to a log file opened ``O_APPEND``, never through pipes that
  would break (and kill the engine with ``SIGPIPE``) when the gateway exits.
- Everything the runtime knows is in ``state_dir/<instance_id>/``: ``workload.json`` (pid, process
  group, endpoint (port, or Unix socket), the process start time and boot id that guard against pid reuse, labels, command,
  whether the engine has passed readiness once, whether it was stopped and when the stopped engine
  ended), ``engine.log`` (+
  ``engine.log.1`` after rotation) and ``exit_code``. ``workload.json`` is replaced atomically.
  The pid recorded (and reported as :attr:`Workload.pid`) is the wrapper's, which is also the
  process group id; the engine is its child.

Endpoints: an engine listens on a loopback TCP port the runtime picks (or the template fixes), or,
when its command names ``{socket}``, on the Unix socket ``state_dir/<instance_id>/engine.sock``
(the workload's endpoint is then that socket, and no port is involved).

Stopping signals the whole process group (``SIGTERM``, then ``SIGKILL`` after the grace), plus any
descendant that moved to another group, and waits until they are gone. Readiness is an HTTP ``GET``
(status below 500) or a TCP connect, probed every ``probe_interval_s`` and raced against the
process's exit (a pidfd, so an adopted engine's exit is noticed at once too).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aigc_gateway.errors import Conflict, UserError
from aigc_gateway.runtime import local_procs as procs
from aigc_gateway.runtime import local_sandbox as sbx
from aigc_gateway.runtime import nvml
from aigc_gateway.runtime.base import (
    Endpoint,
    GpuDiscovery,
    Isolation,
    LaunchError,
    LaunchSpec,
    NotSupported,
    Phase,
    ReadinessKind,
    ReadinessTimeout,
    Workload,
    render,
    uses_socket,
)
from aigc_gateway.runtime.connect import base_url
from aigc_gateway.runtime.mps import MpsControl, MpsError, mps_root_for
from aigc_gateway.runtime.sandbox import cgroups
from aigc_gateway.runtime.sandbox.gpu import device_minors
from aigc_gateway.runtime.sandbox.launch import Sandbox, engine_paths
from aigc_gateway.runtime.sandbox.policy import DATA_DIR, SOCKET_DIR, SOCKET_NAME, rewrite_path
from aigc_gateway.runtime.volumes import LocalVolumes, Volumes

__all__ = ["LocalRuntime"]

logger = logging.getLogger(__name__)

LOG_TAIL_BYTES = 4096
"""How much of the log an exited or timed-out workload carries."""
OBSERVE_PROBE_TIMEOUT_S = 0.25
"""The single readiness probe ``observe``/``list`` make for a live engine not yet seen ready."""
PROBE_TIMEOUT_S = 2.0
"""Upper bound of one readiness probe inside ``wait_ready``."""
KILL_WAIT_S = 5.0
"""How long to wait for the group to vanish after ``SIGKILL`` before giving up (and logging)."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RECORD_VERSION = 1


@dataclass(slots=True)
class _Record:
    """The content of ``workload.json``."""

    instance_id: str
    pid: int
    pgid: int
    host: str | None
    """``None`` for a sandboxed engine: it has no port on the host, only its socket."""
    port: int | None
    started_at: float
    create_time: float | None
    """psutil's create time of the wrapper (seconds since the epoch), for people reading this."""
    start_stamp: float | None
    """The wrapper's start time as :func:`~.local_procs.process_stamp` gives it: its identity."""
    boot_id: str
    command: list[str]
    readiness_kind: str
    readiness_path: str
    log_max_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    stopped: bool = False
    gpu_devices: list[str] = field(default_factory=list)
    gpu_memory_mib: int | None = None
    """Set for a memory share: the card's MPS daemon serves it."""
    ended_at: float | None = None
    """Set by a stop: when the engine ended (the exit file's time, or when the stop saw the last
    process go), seconds since the epoch; ``None`` if that is unknown (it was gone already and
    left no exit file)."""
    uid: int | None = None
    """Sandboxed: the uid the engine runs as."""
    cgroup: dict[str, Any] | None = None
    """Sandboxed: the engine's :class:`~.sandbox.cgroups.Cgroup` (as a dict)."""
    socket_path: str | None = None
    """The Unix socket the gateway reaches the engine on (sandboxed, or an engine whose
    command names ``{socket}``); then no port of the host is used."""
    forwarded: bool = False
    """Sandboxed: the socket is socat's bridge to the engine's port in its namespace (else
    the engine listens on the socket itself)."""
    memory_bytes: int | None = None
    """Sandboxed: the cgroup's memory limit, for the out-of-memory message."""
    netns: str | None = None
    """Sandboxed with ``network: outbound``: its network namespace (removed with the sandbox)."""

    @property
    def sandbox_cgroup(self) -> cgroups.Cgroup | None:
        if self.cgroup is None:
            return None
        c = self.cgroup
        return cgroups.Cgroup(
            int(c["version"]),
            tuple(c["dirs"]),
            memory_dir=c.get("memory_dir"),
            cpuacct_dir=c.get("cpuacct_dir"),
            freezer_dir=c.get("freezer_dir"),
        )

    def to_json(self) -> str:
        return json.dumps({"version": _RECORD_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> _Record:
        data: dict[str, Any] = json.loads(text)
        data.pop("version", None)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class _Paths:
    dir: Path

    @property
    def workload(self) -> Path:
        return self.dir / "workload.json"

    @property
    def log(self) -> Path:
        return self.dir / "engine.log"

    @property
    def log1(self) -> Path:
        return self.dir / "engine.log.1"

    @property
    def exit_code(self) -> Path:
        return self.dir / "exit_code"

    @property
    def socket(self) -> Path:
        return self.dir / "engine.sock"


class LocalRuntime:
    """Runs each instance's engine as a local process group; see the module docstring."""

    name = "local"

    def __init__(
        self,
        *,
        state_dir: Path,
        host: str = "127.0.0.1",
        probe_interval_s: float = 0.01,
        mps: MpsControl | None = None,
        volumes: Volumes | None = None,
        sandbox: Sandbox | None = None,
        refusal: str | None = None,
        socket_root: Path | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        """``sandbox``: run every engine in it (see :mod:`.sandbox`); ``None``: as a plain
        process. ``refusal``: refuse every start with this message (the host cannot sandbox and
        the settings do not allow engines without). ``socket_root``: where the engines' socket
        folders live (a short path: a socket path must stay under 108 bytes)."""
        self._state_dir = Path(state_dir)
        # Default: the gateway's layout (<data>/runtime/local beside <data>/volumes).
        self.volumes: Volumes = volumes or LocalVolumes(self._state_dir.parent.parent / "volumes")
        self._sandbox = sandbox
        self._refusal = refusal
        self.isolation = isolation or Isolation(
            sandboxed=sandbox is not None,
            detail="bubblewrap sandbox" if sandbox is not None else "no sandbox",
            warning=None
            if sandbox is not None
            else "engines are NOT isolated from each other or from the gateway (no sandbox)",
            refusal=refusal,
        )
        """What this runtime reports of its engines' isolation (the gateway shows it)."""
        self._socket_root = socket_root or _socket_root_for(self._state_dir)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._mps = mps if mps is not None else MpsControl(mps_root_for(self._state_dir))
        self._host = host
        self._probe_interval_s = probe_interval_s
        self._client: httpx.AsyncClient | None = None
        self._uds_clients: dict[str, httpx.AsyncClient] = {}
        self._recent_ports: deque[int] = deque(maxlen=256)
        self._boot_id = procs.boot_id()

    # -- the Runtime contract -------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> Workload:
        paths = self._paths(spec.instance_id)
        paths.dir.mkdir(parents=True, exist_ok=True)
        previous = _load(paths)
        if previous is not None:
            current = self._snapshot(previous, paths)
            if current.phase.alive:
                return current
            await self._clear_previous(previous, paths)
        paths.exit_code.unlink(missing_ok=True)
        if self._refusal is not None:
            raise LaunchError(self._refusal)
        if self._sandbox is not None:
            return await self._start_sandboxed(spec, paths, self._sandbox)

        socket_path = _socket_path(paths) if uses_socket(spec) else None
        if socket_path is not None:
            Path(socket_path).unlink(missing_ok=True)  # a stale socket of an earlier run
            port = spec.port
        else:
            port = spec.port if spec.port is not None else self._pick_port()
        argv, working_dir, env, _ = _prepare(spec, port, socket=socket_path)
        env.update(await self._gpu_env(spec))
        proc = _spawn(argv, paths, working_dir, env)
        if socket_path is not None:  # an engine that listens on its own socket
            record = self._new_record(spec, proc.pid, argv, host=None, port=None)
            record.socket_path = socket_path
        else:
            record = self._new_record(spec, proc.pid, argv, host=self._host, port=port)
        _save(paths, record)
        logger.info(
            "engine started",
            extra={
                "instance_id": spec.instance_id,
                "engine_pid": proc.pid,
                "endpoint": _endpoint(record).describe,
            },
        )
        return _workload(record, Phase.STARTING)

    async def _start_sandboxed(self, spec: LaunchSpec, paths: _Paths, sandbox: Sandbox) -> Workload:
        """Start the engine in its sandbox (see :mod:`.sandbox.launch`), reached on its socket."""
        own_socket = any("{socket}" in a for a in (*spec.command, *spec.env.values()))
        port = spec.port if spec.port is not None else sandbox.config.engine_port
        argv, working_dir, env, data_dir = _prepare(
            spec, port, socket=f"{SOCKET_DIR}/{SOCKET_NAME}"
        )
        env = sbx.engine_environment(env, template=spec.env, port_env=spec.port_env)
        env.update(await self._gpu_env(spec))
        inside = [rewrite_path(a, data_dir) for a in argv]
        env = {k: rewrite_path(v, data_dir) for k, v in env.items()}
        if "HOME" not in spec.env:
            env["HOME"] = DATA_DIR
        shares = [env[k] for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY") if k in env]
        resources = spec.resources
        limits = cgroups.Limits(
            memory_bytes=resources.memory_mib << 20 if resources.memory_mib else None,
            cpu=resources.cpu,
            pids=resources.pids or sandbox.config.pids_max,
        )
        socket_dir = self._socket_dir(spec.instance_id)
        try:
            prepared = await asyncio.to_thread(
                sandbox.prepare,
                instance_id=spec.instance_id,
                owner=spec.labels.get("owner", "_unowned"),
                command=inside,
                volume=data_dir,
                socket_dir=str(socket_dir),
                limits=limits,
                port=None if own_socket else port,
                read_only=engine_paths(
                    argv,
                    env,
                    volume=data_dir,
                    working_dir=working_dir,
                    extra=spec.read_only_paths,
                ),
                read_write=[p for p in shares if os.path.isdir(p)],
                gpu_minors=device_minors(spec.gpu.devices) if spec.gpu else (),
                network=spec.network,
            )
        except OSError as e:
            raise LaunchError(f"could not prepare the engine's sandbox: {e}") from e
        (socket_dir / SOCKET_NAME).unlink(missing_ok=True)
        workdir_inside = rewrite_path(working_dir, data_dir)
        if workdir_inside != DATA_DIR:
            prepared.argv[prepared.argv.index("--chdir") + 1] = workdir_inside
        proc = _spawn(prepared.argv, paths, data_dir, env)
        record = self._new_record(spec, proc.pid, inside, host=None, port=None)
        record.uid = prepared.uid
        record.cgroup = asdict(prepared.cgroup)
        record.socket_path = prepared.socket_path
        record.forwarded = not own_socket
        record.memory_bytes = prepared.memory_bytes
        record.netns = prepared.netns
        _save(paths, record)
        logger.info(
            "engine started in its sandbox",
            extra={
                "instance_id": spec.instance_id,
                "engine_pid": proc.pid,
                "uid": prepared.uid,
                "socket": prepared.socket_path,
            },
        )
        return _workload(record, Phase.STARTING)

    def _new_record(
        self, spec: LaunchSpec, pid: int, argv: list[str], *, host: str | None, port: int | None
    ) -> _Record:
        return _Record(
            instance_id=spec.instance_id,
            pid=pid,
            pgid=pid,  # start_new_session: the wrapper leads its own session and group
            host=host,
            port=port,
            started_at=time.time(),
            create_time=procs.process_create_time(pid),
            start_stamp=procs.process_stamp(pid),
            boot_id=self._boot_id,
            command=argv,
            readiness_kind=str(spec.readiness.kind),
            readiness_path=spec.readiness.path,
            log_max_bytes=spec.log_max_bytes,
            labels=dict(spec.labels),
            gpu_devices=list(spec.gpu.devices) if spec.gpu else [],
            gpu_memory_mib=spec.gpu.memory_mib if spec.gpu else None,
        )

    async def wait_ready(self, instance_id: str, *, timeout: float) -> Workload:
        paths = self._paths(instance_id)
        record = _load(paths)
        if record is None:
            return Workload(instance_id, Phase.ABSENT, message="no engine was started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with procs.watch_exit(record.pid, record.start_stamp) as exited:
            watch = exited
            while True:
                procs.rotate_log(paths.log, paths.log1, record.log_max_bytes)
                current = self._snapshot(record, paths)
                if current.phase is Phase.ABSENT:
                    # Perhaps stopped (or replaced) meanwhile: the record on disk says which.
                    fresh = _load(paths)
                    return current if fresh is None else self._snapshot(fresh, paths)
                if current.phase is not Phase.STARTING:
                    return current
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._timeout_error(record, paths, timeout)
                if await self._probe_racing(record, watch, remaining):
                    _mark_ready(paths, record)
                    logger.info("engine ready", extra={"instance_id": instance_id})
                    return _workload(record, Phase.READY)
                if watch is not None and watch.done():
                    # The leader ended; the snapshot decides. If something of the group lives on
                    # (the wrapper was killed on its own), fall back to polling.
                    watch = None
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._timeout_error(record, paths, timeout)
                delay = min(self._probe_interval_s, remaining)
                if watch is None:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.wait({watch}, timeout=delay)

    async def stop(self, instance_id: str, *, grace: float) -> Workload:
        paths = self._paths(instance_id)
        record = _load(paths)
        if record is None:
            return Workload(instance_id, Phase.ABSENT)
        if not record.stopped:
            ended_now = await self._terminate(record, grace)
            # The wrapper's file says when the engine ended; else this stop saw it go.
            record.ended_at = _mtime(paths.exit_code) or ended_now
            record.stopped = True
            record.ready = False
            _save(paths, record)
            paths.exit_code.unlink(missing_ok=True)
            self._drop_sandbox(record)
            logger.info("engine stopped", extra={"instance_id": instance_id})
        if record.gpu_memory_mib is not None:
            await self._release_share(record)
        return self._snapshot(record, paths)

    async def observe(self, instance_id: str) -> Workload:
        paths = self._paths(instance_id)
        record = _load(paths)
        if record is None:
            return Workload(instance_id, Phase.ABSENT)
        return await self._observe(record, paths)

    async def list(self) -> list[Workload]:
        found: list[tuple[_Record, _Paths]] = []
        with os.scandir(self._state_dir) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and _ID.fullmatch(e.name))
        for name in names:
            paths = _Paths(self._state_dir / name)
            record = _load(paths)
            if record is not None:
                found.append((record, paths))
        return list(await asyncio.gather(*(self._observe(r, p) for r, p in found)))

    async def logs(
        self, instance_id: str, *, lines: int | None = None, tail_bytes: int = 8192
    ) -> str:
        paths = self._paths(instance_id)
        return procs.read_log_tail(paths.log, paths.log1, tail_bytes, lines=lines)

    async def forget(self, instance_id: str) -> None:
        paths = self._paths(instance_id)
        record = _load(paths)
        if record is not None:
            current = self._snapshot(record, paths)
            if current.phase.alive:
                raise Conflict(
                    f"the engine of instance {instance_id} is still running (pid {record.pid}); "
                    "stop it before removing its records"
                )
            if not record.stopped:
                await self._terminate(record, 0.0)  # leftovers of an engine that exited
            self._drop_sandbox(record)
        shutil.rmtree(paths.dir, ignore_errors=True)
        shutil.rmtree(self._socket_dir(instance_id), ignore_errors=True)

    async def gpus(self) -> GpuDiscovery:
        """This host's cards, as NVML reports them (node ``local``)."""
        return await asyncio.to_thread(nvml.discover, "local")

    async def suspend(self, instance_id: str) -> Workload:
        raise NotSupported("the local runtime cannot suspend engines yet")

    async def resume(self, instance_id: str) -> Workload:
        raise NotSupported("the local runtime cannot suspend engines yet")

    async def close(self) -> None:
        """Close the probe client. Engines keep running: they outlive the gateway by design."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        clients, self._uds_clients = self._uds_clients, {}
        for client in clients.values():
            await client.aclose()

    # -- the sandbox ----------------------------------------------------------------------------

    @property
    def sandboxed(self) -> bool:
        """Whether this runtime starts engines in a sandbox."""
        return self._sandbox is not None

    def leftover_cgroups(self) -> builtins.list[str]:
        """Engine cgroups that exist on this host now (none once every engine is stopped)."""
        return self._sandbox.leftovers() if self._sandbox is not None else []

    def leftover_networks(self) -> builtins.list[str]:
        """Outbound engines' network namespaces that exist on this host now."""
        return self._sandbox.leftover_networks() if self._sandbox is not None else []

    def _socket_dir(self, instance_id: str) -> Path:
        return self._socket_root / hashlib.sha256(instance_id.encode()).hexdigest()[:16]

    def _drop_sandbox(self, record: _Record) -> None:
        """Remove a stopped engine's cgroup (killing anything left in it) and its socket."""
        cgroup = record.sandbox_cgroup
        if cgroup is not None:
            if cgroups.members(cgroup):
                cgroups.kill_all(cgroup)
            if not cgroups.remove(cgroup):
                logger.warning(
                    "engine cgroup still busy after the stop; left for the next start",
                    extra={"instance_id": record.instance_id, "cgroup": cgroup.dirs},
                )
        if record.netns is not None and self._sandbox is not None:
            self._sandbox.drop_network(record.netns)
        if record.socket_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(record.socket_path)
        client = self._uds_clients.pop(record.socket_path or "", None)
        if client is not None:
            asyncio.ensure_future(client.aclose())  # noqa: RUF006 - closes at once, nothing to await

    # -- GPUs -----------------------------------------------------------------------------------

    async def _gpu_env(self, spec: LaunchSpec) -> dict[str, str]:
        """Make only the granted cards visible; start the card's MPS daemon for a share."""
        if spec.gpu is None:
            return {}
        devices = ",".join(spec.gpu.devices)
        env = {"CUDA_VISIBLE_DEVICES": devices, "NVIDIA_VISIBLE_DEVICES": devices}
        if spec.gpu.memory_mib is not None:
            device = spec.gpu.devices[0]
            try:
                enforced = await self._mps.ensure(device)
            except MpsError as exc:
                raise LaunchError(exc.message) from exc
            if not enforced:
                logger.warning(
                    "GPU share not enforced: MPS is not installed on this host",
                    extra={"instance_id": spec.instance_id, "gpu": device},
                )
            env.update(self._mps.client_env(device, spec.gpu.memory_mib))
            env["AIGC_GPU_MEMORY_MIB"] = str(spec.gpu.memory_mib)
        return env

    async def _release_share(self, record: _Record) -> None:
        """Stop the card's MPS daemon once no live workload holds a share of it."""
        device = record.gpu_devices[0] if record.gpu_devices else None
        if device is None or not self._mps.running(device):
            return
        with os.scandir(self._state_dir) as entries:
            names = [e.name for e in entries if e.is_dir() and _ID.fullmatch(e.name)]
        for name in names:
            if name == record.instance_id:
                continue
            paths = _Paths(self._state_dir / name)
            other = _load(paths)
            if (
                other is not None
                and other.gpu_memory_mib is not None
                and device in other.gpu_devices
                and not other.stopped
                and self._snapshot(other, paths).phase.alive
            ):
                return
        await self._mps.stop(device)

    # -- internals ------------------------------------------------------------------------------

    def _paths(self, instance_id: str) -> _Paths:
        if _ID.fullmatch(instance_id) is None:
            raise UserError(f"invalid instance id {instance_id!r} for the local runtime")
        return _Paths(self._state_dir / instance_id)

    def _pick_port(self) -> int:
        port = procs.pick_free_port(self._host, avoid=self._recent_ports)
        self._recent_ports.append(port)
        return port

    def _snapshot(self, record: _Record, paths: _Paths) -> Workload:
        """What is there now, from the records and the process table; no probing."""
        if record.stopped:
            return Workload(
                record.instance_id, Phase.ABSENT, exited_at=record.ended_at, labels=record.labels
            )
        if record.boot_id != self._boot_id:
            return Workload(
                record.instance_id,
                Phase.ABSENT,
                log_tail=procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES),
                message="the engine was started before this host last restarted",
                labels=record.labels,
            )
        # Leader first, exit file second: the wrapper writes the file before it exits, so a dead
        # leader with no file means the status was never written.
        leader_alive = procs.process_alive(record.pid, record.start_stamp)
        code = _read_exit_code(paths.exit_code)
        if code is not None:
            cgroup = record.sandbox_cgroup
            oom = sbx.oom_message(cgroup, record.memory_bytes) if cgroup is not None else None
            return _workload(
                record,
                Phase.EXITED,
                exit_code=code,
                exited_at=_mtime(paths.exit_code),
                log_tail=procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES),
                message=oom or procs.describe_exit(code),
            )
        if leader_alive:
            return _workload(record, Phase.READY if record.ready else Phase.STARTING)
        if self._group_lives(record):
            return _workload(
                record,
                Phase.EXITED,
                log_tail=procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES),
                message=f"engine supervisor killed: its wrapper (pid {record.pid}), which records "
                "the engine's exit, is gone while the engine still runs; the engine is stopped",
            )
        if record.sandbox_cgroup is not None and not record.stopped:
            # A sandbox dies with its supervisor (bwrap's --die-with-parent): the engine ended
            # when the wrapper was killed, and nothing could record it. The first look that
            # finds it so records the time (an upper bound, so the ledger loses no second), and
            # every later look returns that same time.
            if record.ended_at is None:
                record.ended_at = time.time()
                _save(paths, record)
            return _workload(
                record,
                Phase.EXITED,
                exited_at=record.ended_at,
                log_tail=procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES),
                message=f"engine supervisor killed: its wrapper (pid {record.pid}), which records "
                "the engine's exit, is gone, and the sandboxed engine ended with it",
            )
        return Workload(
            record.instance_id,
            Phase.ABSENT,
            log_tail=procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES),
            message="the engine process is gone and left no exit status "
            "(killed from outside, or the host restarted)",
            labels=record.labels,
        )

    def _group_lives(self, record: _Record) -> bool:
        if record.boot_id != self._boot_id:
            return False  # started before the last boot: nothing of it can be left
        cgroup = record.sandbox_cgroup
        if cgroup is not None and cgroups.members(cgroup):
            return True
        return procs.group_is_ours(record.pgid, record.start_stamp) and procs.group_alive(
            record.pgid
        )

    async def _observe(self, record: _Record, paths: _Paths) -> Workload:
        procs.rotate_log(paths.log, paths.log1, record.log_max_bytes)
        current = self._snapshot(record, paths)
        if current.phase is Phase.STARTING and await self._probe(record, OBSERVE_PROBE_TIMEOUT_S):
            _mark_ready(paths, record)
            return current.with_phase(Phase.READY)
        return current

    async def _clear_previous(self, record: _Record, paths: _Paths) -> None:
        """Before a new start: kill what an exited engine left behind, clear its exit status."""
        if not record.stopped:
            await self._terminate(record, 0.0)
        _append_separator(paths)

    async def _terminate(self, record: _Record, grace: float) -> float | None:
        """SIGTERM the group (and strays), wait up to ``grace``, then SIGKILL; wait for the end.

        Returns when the last process was seen gone (seconds since the epoch), or ``None`` if
        nothing of the engine was left to stop. The wrapper survives both signals (it traps
        ``SIGTERM``; the forced kill spares it) and records the engine's exit and end time."""
        if not self._group_lives(record):
            return None
        cgroup = record.sandbox_cgroup
        if cgroup is not None:
            return await self._terminate_sandboxed(record, cgroup, grace)
        pgid = record.pgid
        strays = procs.descendants_outside_group(record.pid, pgid)
        extra = {"instance_id": record.instance_id, "engine_pid": record.pid}
        procs.signal_group(pgid, signal.SIGTERM)
        procs.signal_processes(strays, signal.SIGTERM)
        if grace > 0 and await procs.wait_gone(pgid, strays, grace):
            return time.time()
        if grace > 0:
            logger.warning("engine still running after %.1f s, killing it", grace, extra=extra)
        procs.signal_processes(strays, signal.SIGKILL)
        procs.kill_group_but(pgid, keep=record.pid)
        if await procs.wait_gone(pgid, strays, KILL_WAIT_S / 2):
            return time.time()
        procs.signal_group(pgid, signal.SIGKILL)  # a process forked meanwhile, or a stuck wrapper
        if not await procs.wait_gone(pgid, strays, KILL_WAIT_S / 2):
            logger.error("engine processes survived SIGKILL", extra=extra)
        return time.time()

    async def _terminate_sandboxed(
        self, record: _Record, cgroup: cgroups.Cgroup, grace: float
    ) -> float | None:
        """The cgroup's stop (see :mod:`.local_sandbox`), then the wait for the wrapper, which
        records the engine's end as bwrap returns."""
        extra = {"instance_id": record.instance_id, "engine_pid": record.pid}
        bwrap = self._sandbox.support.bwrap if self._sandbox is not None else None
        ended, empty = await sbx.terminate_cgroup(
            cgroup,
            bwrap=bwrap or "/usr/bin/bwrap",
            grace=grace,
            kill_wait_s=KILL_WAIT_S,
            before_kill=lambda: logger.warning(
                "engine still running after %.1f s, killing it", grace, extra=extra
            ),
        )
        if not empty:
            logger.error("engine processes survived the cgroup's kill", extra=extra)
        if not await procs.wait_gone(record.pgid, (), KILL_WAIT_S / 2):
            procs.kill_group_but(record.pgid, keep=record.pid)
        return ended if ended is not None else time.time()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,  # never send a local probe through a proxy from the environment
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def _probe(self, record: _Record, limit_s: float) -> bool:
        """One readiness check, bounded by ``limit_s``; ``True`` if it passed."""
        try:
            async with asyncio.timeout(limit_s):
                if record.socket_path is not None:
                    return await self._probe_socket(record, record.socket_path, limit_s)
                if record.host is None or record.port is None:
                    return False
                if record.readiness_kind == ReadinessKind.TCP:
                    _, writer = await asyncio.open_connection(record.host, record.port)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return True
                path = record.readiness_path if record.readiness_path.startswith("/") else "/"
                url = f"{base_url(_endpoint(record))}{path}"
                async with self._http().stream("GET", url, timeout=limit_s) as response:
                    return response.status_code < 500
        except (OSError, TimeoutError, httpx.HTTPError):
            return False

    async def _probe_socket(self, record: _Record, path: str, limit_s: float) -> bool:
        if record.readiness_kind == ReadinessKind.TCP:
            return await sbx.probe_tcp_over_socket(path, forwarded=record.forwarded)
        client = self._uds_clients.get(path)
        if client is None:
            client = self._uds_clients[path] = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=path, retries=0),
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        target = record.readiness_path if record.readiness_path.startswith("/") else "/"
        async with client.stream("GET", f"http://engine{target}", timeout=limit_s) as response:
            return response.status_code < 500

    async def _probe_racing(
        self, record: _Record, exited: asyncio.Future[None] | None, remaining: float
    ) -> bool:
        """One probe, abandoned as soon as the process exits."""
        limit_s = max(0.001, min(remaining, PROBE_TIMEOUT_S))
        if exited is None:
            return await self._probe(record, limit_s)
        probe = asyncio.ensure_future(self._probe(record, limit_s))
        racers: set[asyncio.Future[Any]] = {probe, exited}
        try:
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not probe.done():
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
        return probe.done() and not probe.cancelled() and probe.result()

    def _timeout_error(self, record: _Record, paths: _Paths, timeout: float) -> ReadinessTimeout:
        where = f"socket {record.socket_path}" if record.socket_path else f"port {record.port}"
        if record.readiness_kind == ReadinessKind.TCP:
            check = f"TCP connect on {where}"
        else:
            check = f"GET {record.readiness_path} on {where}"
        tail = procs.read_log_tail(paths.log, paths.log1, LOG_TAIL_BYTES)
        logger.info("engine readiness timed out", extra={"instance_id": record.instance_id})
        return ReadinessTimeout(waited_s=timeout, check=check, tail=tail)


# -- files --------------------------------------------------------------------------------------


def _load(paths: _Paths) -> _Record | None:
    try:
        return _Record.from_json(paths.workload.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        logger.warning(
            "unreadable workload record %s: %s", paths.workload, e, extra={"path": str(paths.dir)}
        )
        return None


def _save(paths: _Paths, record: _Record) -> None:
    tmp = paths.dir / f".workload.json.{os.getpid()}.tmp"
    tmp.write_text(record.to_json(), encoding="utf-8")
    os.replace(tmp, paths.workload)


def _mark_ready(paths: _Paths, record: _Record) -> None:
    """Persist that ``record``'s engine passed readiness, unless the record changed meanwhile.

    Re-read first: during the probe's await a stop or a new start may have replaced the record,
    which must not be overwritten with this stale one. (No await between read and write.)
    """
    record.ready = True
    fresh = _load(paths)
    if fresh is None or fresh.stopped or fresh.ready:
        return
    if (fresh.pid, fresh.started_at) != (record.pid, record.started_at):
        return
    fresh.ready = True
    _save(paths, fresh)


def _read_exit_code(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # being written right now


def _prepare(
    spec: LaunchSpec, port: int | None, *, socket: str | None = None
) -> tuple[list[str], str, dict[str, str], str]:
    """Render the spec for ``port`` (and ``socket``, the ``{socket}`` path the engine listens
    on itself, if its command names one): the argv (program resolved), working dir, environment
    and data dir, as host paths.

    Creates the data and working directories. The environment is the gateway's minus its own
    ``AIGC_*`` variables (they hold secrets), plus the template's, plus the port variable.
    """
    values = {"instance_id": spec.instance_id}
    if port is not None:
        values["port"] = str(port)
    if socket is not None:
        values["socket"] = socket
    data_dir = os.path.abspath(render(spec.data_dir, values))
    values["data_dir"] = data_dir
    _make_dir(data_dir, "data directory")
    working_dir = os.path.abspath(render(spec.working_dir, values))
    _make_dir(working_dir, "working directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    if spec.gpu is None:
        # An engine granted no GPU sees none (the template's own env may still say otherwise).
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update({k: render(v, values) for k, v in spec.env.items()})
    if spec.port_env and port is not None:
        env[spec.port_env] = str(port)
    argv = [render(arg, values) for arg in spec.command]
    if not argv or not argv[0]:
        raise LaunchError("the template's launch.command is empty")
    argv[0] = _resolve_command(argv[0], working_dir, env)
    if socket is None and any("{socket}" in a for a in argv):
        raise LaunchError(
            "the template's command uses {socket}, which only sandboxed engines have; "
            "use {port}, or run the gateway with the sandbox"
        )
    return argv, working_dir, env, data_dir


def _append_separator(paths: _Paths) -> None:
    with contextlib.suppress(FileNotFoundError):
        if paths.log.stat().st_size > 0:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
            with open(paths.log, "ab") as f:
                f.write(f"\n----- engine restarted {stamp} -----\n".encode())


def _make_dir(path: str, what: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise LaunchError(
            f"cannot create the engine's {what} {path!r}: {e.strerror or e}; "
            "fix the template or the permissions"
        ) from e


def _resolve_command(program: str, cwd: str, env: Mapping[str, str]) -> str:
    found = procs.find_executable(program, cwd=cwd, path=env.get("PATH", os.defpath))
    if found is not None:
        return found
    if os.sep not in program:
        where = "looked on PATH"
    elif os.path.isabs(program):
        where = "no executable file at that path"
    else:
        where = f"looked in the working directory {cwd!r}"
    raise LaunchError(
        f"engine command {program!r} was not found on this host ({where}) or is not executable; "
        "install it or fix the template's launch.command"
    )


def _mtime(path: Path) -> float | None:
    """When the wrapper wrote the exit status: the moment the engine ended."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


UNIX_PATH_MAX = 107
"""The longest path a Unix socket can be bound at (``sun_path`` less its terminating NUL)."""


def _socket_path(paths: _Paths) -> str:
    path = str(paths.socket.absolute())
    if len(path.encode()) > UNIX_PATH_MAX:
        raise LaunchError(
            f"the engine's socket path {path!r} is longer than the {UNIX_PATH_MAX} bytes a Unix "
            "socket allows; use a shorter data directory"
        )
    return path


def _endpoint(record: _Record) -> Endpoint:
    if record.socket_path is not None:
        return Endpoint(unix_path=record.socket_path)
    return Endpoint(host=record.host, port=record.port)


def _workload(record: _Record, phase: Phase, **changes: Any) -> Workload:
    return Workload(
        instance_id=record.instance_id,
        phase=phase,
        pid=record.pid,
        endpoint=_endpoint(record),
        started_at=record.started_at,
        labels=record.labels,
        **changes,
    )


def _spawn(argv: list[str], paths: _Paths, cwd: str, env: dict[str, str]) -> Any:
    try:
        return procs.spawn(argv, exit_file=paths.exit_code, log_file=paths.log, cwd=cwd, env=env)
    except OSError as e:
        raise LaunchError(f"could not launch engine command {argv[0]!r}: {e}") from e


def _socket_root_for(state_dir: Path) -> Path:
    """A short folder for the engines' sockets of one gateway (see ``socket_root``)."""
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    return base / "aigc" / tag
