"""``network: outbound``: a sandboxed engine reaches the internet, and nothing of the host or
the site's network.

A second host on this machine (tests/support/remote_host.py) stands for the internet and the
site: a public-looking address, a private one and a link-local one, all three reachable from
this host. The hostile engine (tests/engines/hostile.py) tries each, plus the host's loopback,
another address of the host, the cloud metadata address and the DNS. On the old main a
template could not ask for ``outbound`` at all (and unsandboxed engines reached everything).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from aigc_gateway.runtime.base import Phase
from aigc_gateway.runtime.local import LocalRuntime
from tests.support.remote_host import RemoteHost, reachable, remote_host
from tests.support.sandbox import hostile_spec, running_sandboxed, sandboxed_runtime

pytestmark = pytest.mark.needs("outbound-network")


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteHost]:
    with remote_host() as host:
        yield host


@pytest.fixture
def host_listeners(remote: RemoteHost) -> Iterator[dict[str, tuple[str, int]]]:
    """Services of this host: one on its loopback (the gateway's port), one on its address on
    the link to the remote host (a second interface)."""
    socks = []
    found = {}
    for name, address in (("host_loopback", "127.0.0.1"), ("host_address", remote.host_side)):
        sock = socket.socket()
        sock.bind((address, 0))
        sock.listen(8)
        socks.append(sock)
        found[name] = (address, sock.getsockname()[1])
    try:
        yield found
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with running_sandboxed(tmp_path / "state") as rt:
        yield rt


def _targets(remote: RemoteHost, listeners: dict[str, tuple[str, int]]) -> dict[str, object]:
    return {
        "outbound": {
            "remote_public": [remote.public, remote.port],
            "remote_private": [remote.private, remote.port],
            "remote_link_local": [remote.link_local, remote.port],
            **{name: list(where) for name, where in listeners.items()},
        },
        "resolve": "example.com",
    }


async def _report(
    runtime: LocalRuntime,
    tmp_path: Path,
    instance_id: str,
    targets: dict[str, object],
    **spec: object,
) -> dict[str, dict[str, object]]:
    await runtime.start(
        hostile_spec(
            tmp_path, "--targets", json.dumps(targets), instance_id=instance_id, owner="alice",
            **spec,
        )
    )  # fmt: skip
    ready = await runtime.wait_ready(instance_id, timeout=30)
    assert ready.phase is Phase.READY, ready.log_tail
    report = tmp_path / "volumes" / "alice" / instance_id / "report.json"
    return json.loads(report.read_text())  # type: ignore[no-any-return]


def _worked(report: dict[str, dict[str, object]]) -> set[str]:
    return {name for name, r in report.items() if r["ok"]}


async def test_outbound_reaches_the_internet_and_nothing_of_the_host_or_site(
    runtime: LocalRuntime,
    tmp_path: Path,
    remote: RemoteHost,
    host_listeners: dict[str, tuple[str, int]],
) -> None:
    """The public address and the DNS answer; the host's loopback, its other address, the
    private and link-local addresses (all reachable from the host) and the metadata address
    are refused at once."""
    for address, port in [
        (remote.public, remote.port), (remote.private, remote.port),
        (remote.link_local, remote.port), *host_listeners.values(),
    ]:  # fmt: skip
        assert reachable(address, port), f"{address}:{port} should be reachable from the host"
    report = await _report(
        runtime, tmp_path, "out-1", _targets(remote, host_listeners), network="outbound"
    )
    assert _worked(report) == {"out_remote_public", "dns"}, report
    for name in ("out_remote_private", "out_remote_link_local", "out_host_address"):
        assert "Connection refused" in str(report[name]["detail"]), report[name]
    assert "Connection refused" in str(report["connect_metadata"]["detail"])
    assert "whoami" in report and not report["whoami"]["ok"]


async def test_no_network_reaches_nothing(
    runtime: LocalRuntime,
    tmp_path: Path,
    remote: RemoteHost,
    host_listeners: dict[str, tuple[str, int]],
) -> None:
    """``network: none`` (the default): not even the public address or the DNS."""
    report = await _report(runtime, tmp_path, "none-1", _targets(remote, host_listeners))
    assert _worked(report) == set(), report
    assert runtime.leftover_networks() == []


async def test_an_admin_allowed_private_network_is_reachable(
    tmp_path: Path, remote: RemoteHost, host_listeners: dict[str, tuple[str, int]]
) -> None:
    """``sandbox_outbound_allow`` lets one private network through (an internal mirror); the
    rest stays refused."""
    async with running_sandboxed(
        tmp_path / "state", outbound_allow=(f"{remote.private}/32",)
    ) as rt:
        report = await _report(
            rt, tmp_path, "allow-1", _targets(remote, host_listeners), network="outbound"
        )
        assert _worked(report) == {"out_remote_public", "out_remote_private", "dns"}, report


async def test_the_network_survives_a_gateway_restart_and_goes_with_the_engine(
    runtime: LocalRuntime,
    tmp_path: Path,
    remote: RemoteHost,
    host_listeners: dict[str, tuple[str, int]],
) -> None:
    """A new runtime on the same state (the gateway restarted) re-adopts the outbound engine;
    its stop and forget remove the namespace and end its pasta: nothing is left."""
    await _report(runtime, tmp_path, "out-2", _targets(remote, host_listeners), network="outbound")
    [netns] = runtime.leftover_networks()
    sandbox = runtime._sandbox  # the test reads what the runtime made
    assert sandbox is not None and sandbox.outbound is not None
    pasta = sandbox.outbound.pasta_pid(netns)
    assert pasta is not None and psutil.pid_exists(pasta)
    again = sandboxed_runtime(tmp_path / "state")
    try:
        seen = await again.observe("out-2")
        assert seen.phase is Phase.READY
        assert again.leftover_networks() == [netns]
        await again.stop("out-2", grace=1)
        await again.forget("out-2")
        assert again.leftover_networks() == []
        assert not os.path.exists(f"/run/netns/{netns}")
        assert not psutil.pid_exists(pasta) or psutil.Process(pasta).status() == "zombie"
    finally:
        await again.close()
