"""``network: outbound``'s pure parts: the nftables ruleset, the command line that enters a
prepared namespace, what the host lacks for it, and the admin's allow-list setting. On the
old main none of this exists (``outbound`` was refused by the template schema)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from aigc_gateway.catalog.schema import Launch
from aigc_gateway.runtime.sandbox.detect import SandboxSupport
from aigc_gateway.runtime.sandbox.network import DNS_ADDRESS, ruleset
from aigc_gateway.runtime.sandbox.policy import SandboxPolicy, sandbox_argv
from aigc_gateway.settings import Settings


def _elements(rules: str, name: str) -> list[str]:
    block = rules[rules.index(f"set {name} {{") :]
    found = re.search(r"elements = \{ ([^}]*) \}", block)
    assert found is not None
    return [e.strip() for e in found.group(1).split(",")]


def test_the_ruleset_refuses_the_host_and_the_site() -> None:
    rules = ruleset(host=["192.0.2.2", "fe80::1%eth0", "2001:db8::7"])
    refused4 = {ipaddress.ip_network(e) for e in _elements(rules, "refused4")}
    refused6 = {ipaddress.ip_network(e) for e in _elements(rules, "refused6")}
    for address in ("127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254",
                    "100.64.0.1", "192.0.2.2", "224.0.0.1"):  # fmt: skip
        assert any(ipaddress.ip_address(address) in n for n in refused4), address
    for address in ("::1", "fd00:ec2::254", "fe80::1", "::ffff:10.0.0.1", "2001:db8::7"):
        assert any(ipaddress.ip_address(address) in n for n in refused6), address
    for address in ("8.8.8.8", "198.51.100.1"):
        assert not any(ipaddress.ip_address(address) in n for n in refused4), address
    lines = rules.splitlines()
    # Loopback inside the namespace and the DNS come before any refusal; TCP gets a reset.
    first_reject = next(i for i, line in enumerate(lines) if "reject" in line)
    assert lines.index('\t\toifname "lo" accept') < first_reject
    dns = next(i for i, line in enumerate(lines) if DNS_ADDRESS in line)
    assert dns < first_reject and "dport 53 accept" in lines[dns]
    assert "ip daddr @refused4 meta l4proto tcp reject with tcp reset" in rules
    assert "ip6 daddr @refused6 meta l4proto tcp reject with tcp reset" in rules
    assert "policy accept" in rules  # what is not refused is the internet


def test_allowed_networks_pass_before_the_refusals() -> None:
    rules = ruleset(allow=["10.1.2.0/24", "fd12::/64"]).splitlines()
    allow4 = rules.index("\t\tip daddr { 10.1.2.0/24 } accept")
    allow6 = rules.index("\t\tip6 daddr { fd12::/64 } accept")
    first_reject = next(i for i, line in enumerate(rules) if "reject" in line)
    assert allow4 < first_reject and allow6 < first_reject
    assert not any("daddr {" in line and "accept" in line for line in ruleset().splitlines())


def test_an_outbound_sandbox_enters_its_namespace_instead_of_making_one() -> None:
    policy = SandboxPolicy(
        uid=200001, gid=200001, volume="/srv/v", socket_dir="/run/aigc/x",
        netns="/run/netns/aigc-abc-1", resolv_conf="/srv/state/net/aigc-abc-1.resolv.conf",
        nsenter="/usr/bin/nsenter",
    )  # fmt: skip
    argv = sandbox_argv(policy, ["engine"])
    assert argv[:3] == ["/usr/bin/nsenter", "--net=/run/netns/aigc-abc-1", "--"]
    assert argv[3] == "bwrap" and "--unshare-net" not in argv
    i = argv.index("/srv/state/net/aigc-abc-1.resolv.conf")
    assert argv[i - 1] == "--ro-bind" and argv[i + 1] == "/etc/resolv.conf"
    assert argv.index("/etc") < i  # over the host's /etc, not under it
    plain = sandbox_argv(SandboxPolicy(uid=1, gid=1, volume="/v", socket_dir="/s"), ["e"])
    assert plain[0] == "bwrap" and "--unshare-net" in plain and "/etc/resolv.conf" not in plain


def test_a_resolver_link_into_run_gets_readable_parents() -> None:
    policy = SandboxPolicy(
        uid=1, gid=1, volume="/v", socket_dir="/s", netns="/run/netns/n", resolv_conf="/r",
        resolv_conf_at="/run/systemd/resolve/stub-resolv.conf",
    )  # fmt: skip
    argv = sandbox_argv(policy, ["e"])
    dirs = [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]
    assert "/run/systemd" in dirs and "/run/systemd/resolve" in dirs
    assert argv.index("/run/systemd/resolve") < argv.index("/r")


def test_what_outbound_needs_is_said() -> None:
    support = SandboxSupport(pasta=None, nft="/usr/sbin/nft", ip="/usr/sbin/ip", nsenter=None)
    assert support.outbound_missing() == [
        "pasta is not installed (apt install passt)",
        "nsenter is not installed (apt install util-linux)",
    ]
    full = SandboxSupport(pasta="/usr/bin/pasta", nft="n", ip="i", nsenter="e")
    assert full.outbound_missing() == []


def test_templates_may_ask_for_outbound() -> None:
    assert Launch(command=["engine"], network="outbound").network == "outbound"
    with pytest.raises(ValidationError, match="network"):
        Launch(command=["engine"], network="internet")  # type: ignore[arg-type]


def test_the_allow_list_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGC_SANDBOX_OUTBOUND_ALLOW", "10.1.2.0/24, 10.9.9.9")
    assert Settings(dev=True, data_dir=tmp_path).sandbox_outbound_allow == [
        "10.1.2.0/24", "10.9.9.9",
    ]  # fmt: skip
    monkeypatch.setenv("AIGC_SANDBOX_OUTBOUND_ALLOW", "mirror.internal")
    with pytest.raises(ValidationError, match=r"sandbox_outbound_allow: 'mirror\.internal'"):
        Settings(dev=True, data_dir=tmp_path)
