"""Preparing one engine's sandbox on this host: uid, volume ownership, cgroup, socket folder,
read-only paths, GPU nodes; and what a stop and a forget do to it.

:class:`Sandbox` is what the local runtime (and later a node agent) uses. ``prepare`` returns a
:class:`Prepared`: the argv that goes after the runtime's exit-status wrapper (the cgroup join,
then bwrap, then the uid drop, then the forwarder, then the engine) and the facts to record for
re-adoption (uid, cgroup folders, socket path). Everything it makes is named by the instance id,
so a second ``prepare`` for the same id replaces the first cleanly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aigc_gateway.runtime.sandbox import cgroups
from aigc_gateway.runtime.sandbox.detect import SandboxSupport, host_root_links
from aigc_gateway.runtime.sandbox.network import NetworkError, OutboundNetwork, Tools
from aigc_gateway.runtime.sandbox.policy import (
    SandboxPolicy,
    gpu_device_nodes,
    sandbox_argv,
)
from aigc_gateway.runtime.sandbox.uids import UidMap, UidRange

__all__ = ["Prepared", "Sandbox", "SandboxConfig", "engine_paths"]

log = logging.getLogger(__name__)

GIB = 1 << 30
DEFAULT_UID_RANGE = UidRange(200000, 265535)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    uid_range: UidRange = DEFAULT_UID_RANGE
    pids_max: int = 1024
    tmp_bytes: int = GIB
    shm_bytes: int = GIB
    hidden: tuple[str, ...] = ()
    """Host paths no engine may see (the gateway's data directory)."""
    engine_port: int = 8000
    """The port an engine without a fixed one listens on inside its own network namespace."""
    outbound_allow: tuple[str, ...] = ()
    """Networks an outbound engine may reach although they are private (an internal mirror)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    argv: list[str]
    uid: int
    cgroup: cgroups.Cgroup
    socket_path: str
    memory_bytes: int | None
    netns: str | None = None
    """``network: outbound``: the name of the engine's network namespace."""


class Sandbox:
    """Sandboxes engines on this host; see the module docstring."""

    def __init__(self, config: SandboxConfig, support: SandboxSupport, *, state_dir: Path) -> None:
        if support.cgroup is None or support.bwrap is None:
            raise ValueError("the sandbox needs bubblewrap and cgroups: " + support.describe())
        self.config = config
        self.support = support
        self._layout = support.cgroup
        self._uids = UidMap(Path(state_dir) / "uids.json", config.uid_range)
        # This gateway's cgroups sit in a folder of their own (named after its state dir), so
        # gateways sharing a host (tests, a staging copy) never meet.
        self._scope = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
        self._links = host_root_links()
        self._network: OutboundNetwork | None = None
        if not support.outbound_missing():
            assert support.ip and support.nft and support.pasta
            tools = Tools(ip=support.ip, nft=support.nft, pasta=support.pasta)
            self._network = OutboundNetwork(
                tools, state_dir=Path(state_dir) / "net", scope=self._scope
            )

    def uid_for(self, owner: str) -> int:
        return self._uids.uid_for(owner)

    def prepare(
        self,
        *,
        instance_id: str,
        owner: str,
        command: Sequence[str],
        volume: str,
        socket_dir: str,
        limits: cgroups.Limits,
        port: int | None,
        read_only: Iterable[str] = (),
        read_write: Iterable[str] = (),
        gpu_minors: Iterable[int] = (),
        network: str = "none",
    ) -> Prepared:
        """Make the uid, volume, socket folder, cgroup (and for ``network="outbound"`` the
        network namespace) ready; the argv to run (see above). ``port`` is the engine's port
        inside its namespace, ``None`` when it serves the socket itself. Raises
        :class:`OSError` (a :class:`~.cgroups.CgroupError` for the cgroup, a
        :class:`~.network.NetworkError` for the network)."""
        uid = self.uid_for(owner)
        _own(volume, uid)
        os.makedirs(socket_dir, mode=0o700, exist_ok=True)
        os.chown(socket_dir, uid, uid)
        os.chmod(socket_dir, 0o700)
        cgroup = self.reset_cgroup(instance_id, limits)
        netns = self._outbound(instance_id) if network == "outbound" else None
        present = os.listdir("/dev") if os.path.isdir("/dev") else []
        policy = SandboxPolicy(
            uid=uid,
            gid=uid,
            volume=volume,
            socket_dir=socket_dir,
            read_only=tuple(read_only),
            read_write=tuple(read_write),
            hidden=self.config.hidden,
            devices=gpu_device_nodes(gpu_minors, present),
            tmp_bytes=self.config.tmp_bytes,
            shm_bytes=self.config.shm_bytes,
            port=port,
            root_links=self._links,
            bwrap=self.support.bwrap or "bwrap",
            setpriv=self.support.setpriv or "setpriv",
            socat=self.support.socat or "socat",
            nsenter=self.support.nsenter or "nsenter",
            netns=self._network.path(netns) if netns and self._network else None,
            resolv_conf=self._network.resolv_conf(netns) if netns and self._network else None,
            resolv_conf_at=_resolv_conf_at(),
        )
        argv = [*cgroups.join_argv(cgroup), *sandbox_argv(policy, command)]
        return Prepared(argv, uid, cgroup, policy.socket_path, limits.memory_bytes, netns)

    def _outbound(self, instance_id: str) -> str:
        if self._network is None:
            raise NetworkError(
                "network: outbound needs what this host lacks: "
                + "; ".join(self.support.outbound_missing())
            )
        name = self._network.name_for(hashlib.sha256(instance_id.encode()).hexdigest()[:10])
        self._network.create(name, allow=self.config.outbound_allow)
        return name

    def drop_network(self, netns: str) -> None:
        """Remove an outbound engine's network namespace and its pasta (nothing left is fine)."""
        if self._network is not None:
            self._network.delete(netns)

    def leftover_networks(self) -> list[str]:
        """This gateway's outbound network namespaces that exist now."""
        return self._network.leftovers() if self._network is not None else []

    @property
    def outbound(self) -> OutboundNetwork | None:
        return self._network

    def reset_cgroup(self, instance_id: str, limits: cgroups.Limits) -> cgroups.Cgroup:
        """A fresh cgroup for the instance (a leftover of an earlier start is emptied first)."""
        cgroup, writes = cgroups.plan(self._layout, instance_id, limits, scope=self._scope)
        if any(os.path.isdir(d) for d in cgroup.dirs):
            cgroups.kill_all(cgroup)
            cgroups.remove(cgroup)
        cgroups.create(cgroup, writes)
        return cgroup

    def leftovers(self) -> list[str]:
        """This gateway's engine cgroups that exist now (for tests and ``doctor``)."""
        return cgroups.leftovers(self._layout, scope=self._scope)


def _resolv_conf_at() -> str:
    path = "/etc/resolv.conf"
    if os.path.islink(path):
        return os.path.normpath(os.path.join("/etc", os.readlink(path)))
    return path


def _own(volume: str, uid: int) -> None:
    """Give the volume to ``uid``: its top folder always, its content once (the first
    sandboxed start of a volume made before, or by another uid)."""
    os.makedirs(volume, exist_ok=True)
    if os.stat(volume).st_uid == uid:
        return
    for folder, dirs, files in os.walk(volume):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(folder, name), uid, uid)
    os.chown(volume, uid, uid)


def engine_paths(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    volume: str,
    working_dir: str,
    extra: Iterable[str] = (),
) -> list[str]:
    """The host paths an engine needs read-only to run: the program's folder (and, for a
    virtual environment, the environment and its base interpreter), absolute paths among its
    arguments, the ``PYTHONPATH`` folders, the working folder, ``extra`` (an install dir); and
    the gateway's own Python and import path when the engine runs on the gateway's
    interpreter (``{python}``). Paths under ``volume`` are left out (it is mounted anyway)."""
    wanted: list[str] = [*extra]
    program = argv[0]
    wanted += _program_paths(program)
    for arg in argv[1:]:
        if os.path.isabs(arg) and os.path.exists(arg) and arg != "/":
            wanted.append(arg if os.path.isdir(arg) else os.path.dirname(arg))
    wanted += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    wanted.append(working_dir)
    if _same_file(program, sys.executable):
        wanted += [sys.prefix, sys.base_prefix, *_gateway_import_path()]
    volume = os.path.realpath(volume)
    kept = []
    for path in dict.fromkeys(wanted):
        if not os.path.exists(path):
            continue
        for candidate in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
            if not (candidate == volume or candidate.startswith(volume + "/")):
                kept.append(candidate)
    return list(dict.fromkeys(kept))


def _program_paths(program: str) -> list[str]:
    paths = [os.path.dirname(program), os.path.dirname(os.path.realpath(program))]
    bindir = os.path.dirname(os.path.abspath(program))
    cfg = Path(bindir).parent / "pyvenv.cfg"
    if cfg.is_file():
        paths.append(str(cfg.parent))
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                paths.append(str(Path(value.strip()).parent))
    real = os.path.realpath(program)
    if os.path.basename(os.path.dirname(real)) == "bin":
        paths.append(os.path.dirname(os.path.dirname(real)))  # an interpreter's prefix
    return paths


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _gateway_import_path() -> list[str]:
    return [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
