"""What one engine's sandbox looks like, and the command line that builds it (pure).

A :class:`SandboxPolicy` says everything about one engine's sandbox: the host directories it
sees read-only, its volume (read-write at :data:`DATA_DIR`), the folder of its Unix socket
(read-write at :data:`SOCKET_DIR`), the GPU device nodes it is granted, the size of its private
``/tmp`` and ``/dev/shm``, the paths it must not see, and the uid it runs as. :func:`sandbox_argv`
turns it into the argv that runs the engine command inside it; nothing here touches the host.

The command line, outermost first::

    [nsenter --net=NETNS --] bwrap NAMESPACES MOUNTS -- setpriv DROP -- sh -c FORWARD sock port -- ENGINE...

- ``nsenter`` only for ``network: outbound``: the engine's network namespace is then one the
  gateway made and wired (see :mod:`.network`) instead of bwrap's own loopback-only one, and
  the sandbox's ``/etc/resolv.conf`` is replaced by one naming that namespace's resolver.

- ``bwrap`` runs as root (no user namespace, so files the engine writes are owned by its real
  uid on the host, and the host's 0700 folders above a mounted path do not matter). It gives the
  engine fresh mount, PID, IPC, UTS, network and (where there is one) cgroup namespaces, a new
  session (no ``TIOCSTI`` into the gateway's terminal) and dies with its parent.
- ``setpriv`` inside the sandbox drops to the user's uid and gid, clears supplementary groups,
  empties every capability set (bounding set included) and sets ``no_new_privs``, so neither a
  setuid file nor a file capability can ever make the engine root again. (bwrap's ``--cap-drop``
  cannot be used: the drop must come after the uid change, which needs ``CAP_SETUID``.)
- The forwarder (``socat``, started by a one-line ``sh``) listens on the Unix socket
  :data:`SOCKET_NAME` in :data:`SOCKET_DIR` and bridges each connection to the engine's TCP port
  on the sandbox's own loopback; it is skipped for an engine that listens on the socket itself.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DATA_DIR",
    "FORWARD_SCRIPT",
    "SOCKET_DIR",
    "SOCKET_NAME",
    "SYSTEM_DIRS",
    "SandboxPolicy",
    "gpu_device_nodes",
    "rewrite_path",
    "sandbox_argv",
]

DATA_DIR = "/data"
"""Where the engine sees its volume, whatever the host path."""
SOCKET_DIR = "/run/aigc"
"""Where the engine sees the folder of its socket (the host folder is per instance)."""
SOCKET_NAME = "engine.sock"
SYSTEM_DIRS = ("/usr", "/etc")
"""Host directories every sandbox sees read-only (where they exist). ``/etc`` holds no secret
an unprivileged uid could read on the host either (``shadow`` is root's only). Not ``/opt``:
engines are installed there, and one engine sees only its own install dir."""
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level names that are symlinks into ``/usr`` on merged-/usr systems, or directories."""
NVIDIA_CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
"""Device nodes every granted GPU needs besides its own ``/dev/nvidiaN``."""

FORWARD_SCRIPT = (
    "sock=$1; port=$2; shift 2; socat -b 262144 -lf /dev/null "
    'UNIX-LISTEN:"$sock",fork,unlink-early,backlog=1024 '
    'TCP:127.0.0.1:"$port" </dev/null & exec "$@"'
)
"""``sh -c FORWARD_SCRIPT fwd SOCKET PORT ENGINE...``: the bridge, then the engine in the shell's
place. socat is the engine's child, in its sandbox and cgroup; it ends with the PID namespace.
Its listen backlog is raised from socat's 5: a Unix socket refuses a connect at once when the
backlog is full, so a burst of new client connections (a page's parallel requests) would get
502s instead of waiting to be accepted."""


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """One engine's sandbox; see the module docstring. Paths are absolute host paths."""

    uid: int
    gid: int
    volume: str
    """The instance's volume on the host, mounted read-write at :data:`DATA_DIR`."""
    socket_dir: str
    """The host folder mounted read-write at :data:`SOCKET_DIR` (the socket appears in it)."""
    read_only: tuple[str, ...] = ()
    """Host paths the engine needs to run (its install dir, venv, interpreter, source tree),
    mounted read-only at the same path."""
    read_write: tuple[str, ...] = ()
    """Host paths shared read-write at the same path (an MPS pipe directory)."""
    hidden: tuple[str, ...] = ()
    """Host paths the engine must not see even when a read-only path contains them (the
    gateway's data directory): covered with an empty tmpfs."""
    devices: tuple[str, ...] = ()
    """Device nodes to add to the minimal ``/dev`` (``/dev/nvidia0``, ``/dev/nvidiactl``, ...)."""
    tmp_bytes: int = 1 << 30
    shm_bytes: int = 1 << 30
    port: int | None = 8000
    """The engine's TCP port inside its network namespace, bridged to the socket; ``None`` for
    an engine that listens on the socket itself."""
    workdir: str = DATA_DIR
    netns: str | None = None
    """``network: outbound``: the path of the engine's prepared network namespace (``None``:
    bwrap makes one with only loopback)."""
    resolv_conf: str | None = None
    """With ``netns``: the file shown as the sandbox's ``/etc/resolv.conf``."""
    resolv_conf_at: str = "/etc/resolv.conf"
    """Where it is mounted: the host's ``/etc/resolv.conf``, or the file that link names (a
    link into ``/run``, as systemd-resolved makes, would dangle in the sandbox)."""
    system_dirs: tuple[str, ...] = SYSTEM_DIRS
    root_links: tuple[tuple[str, str | None], ...] = ()
    """For each of :data:`ROOT_LINKS` present on the host: its symlink target, or ``None`` for
    a real directory (bound read-only)."""
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"
    socat: str = "socat"
    shell: str = "/bin/sh"
    nsenter: str = "nsenter"

    @property
    def socket_path(self) -> str:
        """The socket as the gateway (on the host) opens it."""
        return posixpath.join(self.socket_dir, SOCKET_NAME)


def sandbox_argv(policy: SandboxPolicy, command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` (already rendered for the sandbox's view) in ``policy``."""
    enter = [] if policy.netns is None else [policy.nsenter, f"--net={policy.netns}", "--"]
    return [
        *enter,
        policy.bwrap,
        *_namespaces(own_network=policy.netns is None),
        *_mounts(policy),
        "--chdir",
        policy.workdir,
        "--",
        *_drop(policy),
        *_forward(policy),
        *command,
    ]


def _namespaces(*, own_network: bool) -> list[str]:
    # Not --unshare-all: it adds --unshare-user-try, and a user namespace would map only root.
    return [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        *(["--unshare-net"] if own_network else []),
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "engine",
    ]


def _mounts(policy: SandboxPolicy) -> list[str]:
    args: list[str] = []
    for path in policy.system_dirs:
        args += ["--ro-bind-try", path, path]
    for name, target in policy.root_links:
        args += ["--symlink", target, name] if target is not None else ["--ro-bind", name, name]
    # The private /proc, /dev, /tmp and /dev/shm first: host paths under /tmp are bound onto it.
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(policy.tmp_bytes), "--tmpfs", "/tmp"]  # noqa: S108
    args += ["--size", str(policy.shm_bytes), "--tmpfs", "/dev/shm"]  # noqa: S108
    ro = _outermost(p for p in policy.read_only if not _under_any(p, policy.system_dirs))
    resolv = [] if policy.resolv_conf is None else [policy.resolv_conf_at]
    args += _parents([*ro, *policy.read_write, DATA_DIR, SOCKET_DIR, *resolv])
    for path in ro:
        args += ["--ro-bind", path, path]
    if policy.resolv_conf is not None:
        args += ["--ro-bind", policy.resolv_conf, policy.resolv_conf_at]
    for path in policy.hidden:
        if any(_under(path, r) for r in ro):
            args += ["--tmpfs", path]
    for node in policy.devices:
        args += ["--dev-bind", node, node]
    for path in policy.read_write:
        args += ["--bind", path, path]
    args += ["--bind", policy.volume, DATA_DIR, "--bind", policy.socket_dir, SOCKET_DIR]
    return args


def _drop(policy: SandboxPolicy) -> list[str]:
    return [
        policy.setpriv,
        f"--reuid={policy.uid}",
        f"--regid={policy.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def _forward(policy: SandboxPolicy) -> list[str]:
    if policy.port is None:
        return []
    sock = posixpath.join(SOCKET_DIR, SOCKET_NAME)
    return [policy.shell, "-c", FORWARD_SCRIPT, "aigc-forward", sock, str(policy.port)]


_OWN_MOUNTS = frozenset({"/proc", "/dev", "/dev/shm", "/tmp"})  # noqa: S108 - inside the sandbox


def _parents(paths: Iterable[str]) -> list[str]:
    """``--dir`` (mode 0755) for every folder above a mount point that bwrap would otherwise
    create as 0700 (unreadable to the engine's uid)."""
    wanted: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(posixpath.normpath(path))
        while parent not in ("/", ""):
            wanted.add(parent)
            parent = posixpath.dirname(parent)
    args: list[str] = []
    for folder in sorted(wanted, key=lambda p: (p.count("/"), p)):
        if not _under_any(folder, SYSTEM_DIRS) and folder not in _OWN_MOUNTS:
            args += ["--perms", "0755", "--dir", folder]
    return args


def _under(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _under_any(path: str, roots: Iterable[str]) -> bool:
    return any(_under(path, r) for r in roots)


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths without those inside another one of them, sorted (one mount covers both)."""
    unique = sorted({posixpath.normpath(p) for p in paths})
    kept: list[str] = []
    for path in unique:
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    return kept


def rewrite_path(text: str, host_dir: str, inside: str = DATA_DIR) -> str:
    """``text`` with the host volume path ``host_dir`` (as a whole path prefix) replaced by
    where the engine sees it."""
    host_dir = host_dir.rstrip("/")
    return re.sub(re.escape(host_dir) + r"(?=/|$|[^\w.-])", inside, text)


def gpu_device_nodes(minors: Iterable[int], present: Iterable[str]) -> tuple[str, ...]:
    """The device nodes of granted cards ``minors``: ``/dev/nvidiaN`` for each, plus the control
    nodes, all only where ``present`` (the names in the host's ``/dev``) has them. No grant: no
    node, not even ``nvidiactl``."""
    names = set(present)
    wanted = sorted(set(minors))
    if not wanted:
        return ()
    nodes = [f"/dev/nvidia{m}" for m in wanted if f"nvidia{m}" in names]
    nodes += [f"/dev/{n}" for n in NVIDIA_CONTROL_NODES if n in names]
    if "nvidia-caps" in names:
        nodes.append("/dev/nvidia-caps")
    return tuple(nodes)
