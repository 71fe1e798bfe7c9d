"""What this host offers the sandbox, as one report for the runtime, ``doctor`` and ``/healthz``.

:func:`probe` looks (programs on ``PATH``, the cgroup layout, this process's capabilities, and
one real ``bwrap`` run, about 30 ms); :class:`SandboxSupport` is the plain result, and
:meth:`SandboxSupport.missing` says in words what is lacking, so a message can name it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aigc_gateway.runtime.sandbox import cgroups
from aigc_gateway.runtime.sandbox.policy import ROOT_LINKS

__all__ = ["NOT_ISOLATED", "SandboxSupport", "capabilities", "host_root_links", "probe"]

NOT_ISOLATED = "engines are NOT isolated from each other or from the gateway"
"""The warning every surface shows when engines run unsandboxed."""

CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN = 0, 5, 6, 7, 21
NEEDED_CAPS = {
    "CAP_SYS_ADMIN": CAP_SYS_ADMIN,
    "CAP_SETUID": CAP_SETUID,
    "CAP_SETGID": CAP_SETGID,
    "CAP_CHOWN": CAP_CHOWN,
    "CAP_KILL": CAP_KILL,
}


@dataclass(frozen=True, slots=True)
class SandboxSupport:
    """The facts; ``missing()`` empty means engines can be sandboxed here."""

    bwrap: str | None = None
    bwrap_works: bool = False
    bwrap_error: str = ""
    setpriv: str | None = None
    socat: str | None = None
    root: bool = False
    capabilities: frozenset[str] = field(default_factory=frozenset)
    cgroup: cgroups.CgroupLayout | None = None
    cgroup_writable: bool = False
    pasta: str | None = None
    nft: str | None = None
    ip: str | None = None
    nsenter: str | None = None

    def outbound_missing(self) -> list[str]:
        """What keeps ``network: outbound`` from working here (the sandbox itself aside), each
        as an instruction."""
        problems = []
        if self.pasta is None:
            problems.append("pasta is not installed (apt install passt)")
        if self.nft is None:
            problems.append("nft is not installed (apt install nftables)")
        if self.ip is None:
            problems.append("ip is not installed (apt install iproute2)")
        if self.nsenter is None:
            problems.append("nsenter is not installed (apt install util-linux)")
        return problems

    def missing(self) -> list[str]:
        """What keeps the sandbox from working here, each as an instruction."""
        problems = []
        if self.bwrap is None:
            problems.append("bubblewrap is not installed (apt install bubblewrap)")
        elif not self.bwrap_works:
            problems.append(f"bubblewrap cannot create namespaces here: {self.bwrap_error}")
        if self.setpriv is None:
            problems.append("setpriv is not installed (apt install util-linux)")
        if self.socat is None:
            problems.append("socat is not installed (apt install socat)")
        lacking = sorted(set(NEEDED_CAPS) - self.capabilities)
        if lacking:
            problems.append(
                f"the gateway runs without {', '.join(lacking)} (run it as root, or grant "
                "those capabilities)"
            )
        if self.cgroup is None:
            problems.append("no cgroup hierarchy is mounted at /sys/fs/cgroup")
        else:
            if self.cgroup.missing():
                problems.append(
                    f"cgroup v{int(self.cgroup.version)} lacks the controllers "
                    f"{', '.join(self.cgroup.missing())}"
                )
            if not self.cgroup_writable:
                problems.append("the cgroup hierarchy is not writable by the gateway")
        return problems

    @property
    def supported(self) -> bool:
        return not self.missing()

    def describe(self) -> str:
        """One line for people: what the sandbox uses here, or what is missing."""
        if not self.supported:
            return "; ".join(self.missing())
        assert self.cgroup is not None
        controllers = ",".join(sorted(self.cgroup.controllers))
        outbound = "" if self.outbound_missing() else ", outbound network (pasta, nftables)"
        return (
            f"bubblewrap, cgroup v{int(self.cgroup.version)} ({controllers}), per-user uids"
            + outbound
        )


def capabilities(status: str | None = None) -> frozenset[str]:
    """The effective capabilities of this process among :data:`NEEDED_CAPS`."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return frozenset()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return frozenset(n for n, bit in NEEDED_CAPS.items() if mask >> bit & 1)
    return frozenset()


def probe(*, bwrap: str = "bwrap", cgroup_root: Path = Path("/sys/fs/cgroup")) -> SandboxSupport:
    """Look at this host (see the module docstring)."""
    found = shutil.which(bwrap)
    works, error = _try_bwrap(found) if found else (False, "")
    layout = cgroups.detect(cgroup_root)
    return SandboxSupport(
        bwrap=found,
        bwrap_works=works,
        bwrap_error=error,
        setpriv=shutil.which("setpriv"),
        socat=shutil.which("socat"),
        root=os.geteuid() == 0,
        capabilities=capabilities(),
        cgroup=layout,
        cgroup_writable=layout is not None and _writable(layout),
        pasta=_which("pasta"),
        nft=_which("nft"),
        ip=_which("ip"),
        nsenter=_which("nsenter"),
    )


def _which(name: str) -> str | None:
    """``name`` on ``PATH`` or in the system folders (a service's ``PATH`` may lack sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _try_bwrap(program: str) -> tuple[bool, str]:
    argv = [
        program,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        *_link_args(host_root_links()),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        "/usr/bin/true",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    said = done.stderr.decode(errors="replace").strip()
    return done.returncode == 0, said or f"exit code {done.returncode}"


def _writable(layout: cgroups.CgroupLayout) -> bool:
    return all(os.access(mount, os.W_OK) for mount in set(layout.mounts.values()))


def host_root_links(root: str = "/") -> tuple[tuple[str, str | None], ...]:
    """The top-level ``/bin``, ``/lib``... of this host: a symlink's target, or ``None`` for a
    real folder."""
    found: list[tuple[str, str | None]] = []
    for name in ROOT_LINKS:
        path = os.path.join(root, name.lstrip("/"))
        if os.path.islink(path):
            found.append((name, os.readlink(path)))
        elif os.path.isdir(path):
            found.append((name, None))
    return tuple(found)


def _link_args(links: tuple[tuple[str, str | None], ...]) -> list[str]:
    args: list[str] = []
    for name, target in links:
        args += ["--symlink", target, name] if target is not None else ["--ro-bind", name, name]
    return args
