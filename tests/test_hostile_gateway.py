"""A hostile engine run by the real gateway (``aigc-gateway serve`` as a process, sandboxed as
it is by default on a host that can) tries every escape against that gateway and its other
tenant; each fails. Its report comes back through the gateway's own files API.

The targets are the real ones: the gateway process's pid (its ``/proc`` entries, its root, its
environment), its database and secret key, its port, another user's running engine (its socket)
and that user's volume with a model file in it. On today's main every attempt succeeds: engines
run as the gateway's user, with the host's filesystem, processes and loopback.
(tests/test_hostile_engine.py tests the same engine against the runtime alone, with the limits.)
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from aigc_gateway.settings import Settings
from tests.support.gateway import (
    Api,
    add_user,
    engine_endpoint,
    stop_engines_async,
    write_templates,
)
from tests.support.process import gateway_process
from tests.support.sandbox import HOSTILE

pytestmark = pytest.mark.needs("sandbox")


def hostile_template(targets: dict[str, object], network: str = "none") -> str:
    command = [
        sys.executable,
        HOSTILE,
        "--data-dir",
        "{data_dir}",
        "--targets",
        json.dumps(targets),
    ]
    return f"""
id: hostile
family: hostile
version: "1"
display: {{name: {{en: "Hostile", zh-CN: "恶意"}}}}
launch:
  command: {json.dumps(command)}
  stop_grace_s: 1
  network: {network}
readiness: {{http: /, timeout_s: 90}}
"""


@pytest.mark.parametrize(
    "network", ["none", pytest.param("outbound", marks=pytest.mark.needs("outbound-network"))]
)
async def test_a_hostile_engine_reaches_nothing_of_the_gateway_or_its_other_tenant(
    tmp_path: Path, listener: socket.socket, network: str
) -> None:
    """Also with ``network: outbound`` (the internet: tests/test_outbound_network.py): the
    gateway's port and the metadata address stay out of reach."""
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    root = await add_user(settings, "root", admin=True)
    tokens = {name: await add_user(settings, name) for name in ("alice", "bob")}
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with gateway_process(data, templates, listener) as gw:
            admin, alice, bob = Api(url, root), Api(url, tokens["alice"]), Api(url, tokens["bob"])
            try:
                report = await _hostile_report(gw.pid, data, templates, network, admin, alice, bob)
            finally:
                for api in (admin, alice, bob):
                    await api.aclose()
    finally:
        await stop_engines_async(settings)
    worked = {name for name, r in report.items() if r["ok"]}
    # With outbound the engine has a network (it reaches the DNS), and still none of the above.
    assert worked == ({"dns"} if network == "outbound" else set()), report
    tried = {
        "read_database", "read_secret", "proc_root_database", "proc_environ", "proc_fd",
        "list_other_volume", "read_other_file", "see_processes", "signal_gateway",
        "connect_gateway_port", "connect_metadata", "connect_other_socket",
        "setuid_root_file", "become_root", "no_new_privs", "whoami", "dns",
    }  # fmt: skip
    assert set(report) == tried


async def _hostile_report(
    gateway_pid: int, data: Path, templates: Path, network: str, admin: Api, alice: Api, bob: Api
) -> dict[str, dict[str, object]]:
    neighbour = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    other_socket = await engine_endpoint(admin, neighbour["id"])
    assert other_socket.startswith("unix:"), "the gateway runs its engines sandboxed"
    (volume,) = (data / "volumes").glob("*/tiny")
    model = volume / "model.safetensors"
    model.write_bytes(b"alice's weights")
    database, secret = data / "gateway.db", data / "secret_key"
    assert database.is_file() and secret.is_file()
    targets = {
        "gateway_pid": gateway_pid,
        "database": str(database),
        "secret": str(secret),
        "other_volume": str(volume),
        "other_file": str(model),
        "tcp_ports": {"gateway_port": int(admin.client.base_url.port or 0)},
        "other_socket": other_socket.removeprefix("unix:"),
        "resolve": "example.com",
    }
    (templates / "hostile.yaml").write_text(hostile_template(targets, network))
    reloaded = await admin.client.post("/api/templates/reload")
    assert reloaded.status_code == 200 and not reloaded.json()["problems"], reloaded.text
    inst = await bob.wait_state((await bob.create("hostile"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    answer = await bob.client.get("/api/files/hostile/content", params={"path": "report.json"})
    assert answer.status_code == 200, answer.text
    report: dict[str, dict[str, object]] = answer.json()
    return report
