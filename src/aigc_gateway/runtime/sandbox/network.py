"""``network: outbound``: an engine's own network namespace with internet access and nothing else.

An engine with ``network: none`` gets a namespace of bwrap's own with only loopback. One with
``outbound`` gets a named namespace the gateway makes for it (``ip netns add``), where:

- ``pasta`` (Debian ``passt``, a user-mode network stack) gives it an interface with the host's
  address and routes, and opens an ordinary socket on the host for each of its connections. Its
  options map nothing of the host into the namespace (``--no-map-gw``: the gateway address is
  not the host's loopback) and forward no port into it (``-t none -u none``). pasta isolates
  itself (an empty mount namespace, seccomp, ``no_new_privs``, most capabilities dropped); it runs
  as root only because it must enter a namespace root owns (``--runas 0``).
- an nftables table inside the namespace refuses every connection to the host's loopback, its
  own addresses, private and shared ranges, link-local (the cloud metadata address
  ``169.254.169.254``), multicast and reserved ones, IPv4 and IPv6, before pasta ever sees it:
  TCP gets a reset and everything else an ICMP "administratively prohibited", so an engine's
  connect fails at once instead of hanging. The engine cannot change the table: it has no
  capability at all (see :mod:`.policy`).
- DNS goes to one address (:data:`DNS_ADDRESS`, the only refused address let through, port 53
  only) that pasta forwards to the host's first resolver, whatever that is (a private address,
  or ``127.0.0.53``); the sandbox's ``/etc/resolv.conf`` names only it.

The ruleset is pure (:func:`ruleset`); :class:`OutboundNetwork` makes and removes one namespace
(about 40 ms), and finds what a gateway left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "DNS_ADDRESS",
    "NETNS_DIR",
    "REFUSED",
    "NetworkError",
    "OutboundNetwork",
    "host_addresses",
    "ruleset",
]

NETNS_DIR = "/run/netns"
"""Where ``ip netns`` keeps named namespaces (a bind mount of each one)."""
DNS_ADDRESS = "169.254.0.53"
"""The resolver an outbound engine sees; pasta forwards it to the host's own."""

REFUSED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
    "::/127", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8",
)  # fmt: skip
"""What no outbound engine may reach: this host (its loopback), the networks of the site it
runs in (RFC 1918, shared address space, ULA), link-local (cloud metadata), benchmarking,
multicast and reserved ranges, IPv4-mapped IPv6."""

TABLE = "aigc_outbound"


class NetworkError(OSError):
    """The namespace, its rules or pasta could not be set up; the message says which step."""


def ruleset(
    *,
    host: Iterable[str] = (),
    allow: Iterable[str] = (),
    dns: str = DNS_ADDRESS,
) -> str:
    """The nftables script for one outbound namespace (pure): refuse :data:`REFUSED` and the
    ``host`` addresses, except DNS to ``dns`` and the admin's ``allow`` networks (which are let
    through first: an internal mirror)."""
    refused4, refused6 = _split([*REFUSED, *host])
    allowed4, allowed6 = _split(allow)
    lines = [
        f"table inet {TABLE} {{",
        *_set("refused4", "ipv4_addr", refused4),
        *_set("refused6", "ipv6_addr", refused6),
        "\tchain output {",
        "\t\ttype filter hook output priority 0; policy accept;",
        # The namespace's own loopback and its own addresses (routed through lo) are the
        # engine's, not the host's.
        '\t\toifname "lo" accept',
        f"\t\tip daddr {dns} meta l4proto {{ tcp, udp }} th dport 53 accept",
    ]
    if allowed4:
        lines.append(f"\t\tip daddr {{ {', '.join(allowed4)} }} accept")
    if allowed6:
        lines.append(f"\t\tip6 daddr {{ {', '.join(allowed6)} }} accept")
    lines += [
        "\t\tip daddr @refused4 meta l4proto tcp reject with tcp reset",
        "\t\tip daddr @refused4 reject with icmp type admin-prohibited",
        "\t\tip6 daddr @refused6 meta l4proto tcp reject with tcp reset",
        "\t\tip6 daddr @refused6 reject with icmpv6 type admin-prohibited",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _split(networks: Iterable[str]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for entry in networks:
        net = ipaddress.ip_network(entry.split("%", 1)[0], strict=False)
        (v4 if net.version == 4 else v6).append(str(net))
    return sorted(set(v4)), sorted(set(v6))


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    return [
        f"\tset {name} {{",
        f"\t\ttype {kind}; flags interval; auto-merge;",
        f"\t\telements = {{ {', '.join(elements)} }}",
        "\t}",
    ]


def host_addresses() -> list[str]:
    """Every IP address of this host's interfaces now (a service bound to any of them is the
    host's, whatever range it is in)."""
    found: list[str] = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (2, 10):  # AF_INET, AF_INET6
                found.append(address.address.split("%", 1)[0])
    return found


def _wait_gone(pid: int, limit_s: float = 5.0) -> None:
    """Until a killed pasta has ended (it is not our child: gone, or a zombie for its parent)."""
    deadline = time.monotonic() + limit_s
    delay = 0.001
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@dataclass(frozen=True, slots=True)
class Tools:
    ip: str
    nft: str
    pasta: str


class OutboundNetwork:
    """Makes and removes the outbound namespaces of one gateway (named ``aigc-<scope>-...``);
    the files it keeps for each (pasta's pid, the sandbox's ``resolv.conf``) are in
    ``state_dir``."""

    def __init__(self, tools: Tools, *, state_dir: Path, scope: str) -> None:
        self.tools = tools
        self._dir = Path(state_dir)
        self._prefix = f"aigc-{scope}-"

    def name_for(self, key: str) -> str:
        """The namespace's name for ``key`` (a hash of the instance id)."""
        return self._prefix + key

    def path(self, name: str) -> str:
        return os.path.join(NETNS_DIR, name)

    def resolv_conf(self, name: str) -> str:
        return str(self._dir / f"{name}.resolv.conf")

    def create(self, name: str, *, allow: Iterable[str] = ()) -> None:
        """A fresh namespace ``name`` (one left from before is removed first) with its rules and
        its pasta; raises :class:`NetworkError`."""
        self.delete(name)
        self._dir.mkdir(parents=True, exist_ok=True)
        Path(self.resolv_conf(name)).write_text(f"nameserver {DNS_ADDRESS}\n")
        rules = ruleset(host=host_addresses(), allow=allow)
        try:
            self._run("create the namespace", self.tools.ip, "netns", "add", name)
            self._run("bring up its loopback", self.tools.ip, "-n", name, "link", "set", "lo", "up")
            # The rules before pasta: no packet leaves before they hold.
            self._run(
                "load its rules", self.tools.ip, "netns", "exec", name, self.tools.nft, "-f", "-",
                stdin=rules,
            )  # fmt: skip
            self._run(
                "start pasta",
                self.tools.pasta, "--netns", self.path(name), "--runas", "0", "--config-net",
                "--no-map-gw", "-t", "none", "-u", "none", "-T", "none", "-U", "none", "-q",
                "--dns-forward", DNS_ADDRESS, "-P", str(self._pidfile(name)),
            )  # fmt: skip
        except NetworkError:
            self.delete(name)
            raise

    def delete(self, name: str) -> None:
        """Stop the namespace's pasta and remove the namespace; nothing left is fine."""
        pid = self._pasta_pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
        if os.path.exists(self.path(name)):
            with contextlib.suppress(NetworkError):
                self._run("remove the namespace", self.tools.ip, "netns", "delete", name)
        for path in (self._pidfile(name), Path(self.resolv_conf(name))):
            path.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """This gateway's outbound namespaces that exist now."""
        try:
            names = os.listdir(NETNS_DIR)
        except OSError:
            return []
        return sorted(n for n in names if n.startswith(self._prefix))

    def pasta_pid(self, name: str) -> int | None:
        return self._pasta_pid(name)

    def _pidfile(self, name: str) -> Path:
        return self._dir / f"{name}.pasta.pid"

    def _pasta_pid(self, name: str) -> int | None:
        """pasta's pid if it still runs (and is pasta: a pid is reused)."""
        try:
            pid = int(self._pidfile(name).read_text().strip())
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ValueError):
            return None
        return pid if exe.startswith("pasta") or exe.startswith("passt") else None

    def _run(self, step: str, *argv: str, stdin: str | None = None) -> None:
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=15, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"outbound network: could not {step}: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise NetworkError(
                f"outbound network: could not {step} ({argv[0]} exit {done.returncode}): "
                + (said[-1] if said else "no message")
            )
