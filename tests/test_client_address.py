"""Who a client is, as ``aigc-gateway serve`` runs: a forwarding header is believed only from
the proxies listed in ``trusted_proxies`` (none by default), so a loopback client cannot claim
another address to the audit log or the per-address sign-in limit. (The proxies' side, and a
trusted proxy's headers believed, are in ``test_proxy_front.py``.)"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from aigc_gateway.settings import Settings
from tests.support.gateway import add_user, write_templates
from tests.support.process import gateway_process


async def test_a_loopback_clients_forwarded_for_is_not_believed(
    tmp_path: Path, listener: socket.socket
) -> None:
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    token = await add_user(
        Settings(dev=True, data_dir=data, templates_dir=templates), "root", admin=True
    )
    port = listener.getsockname()[1]
    with gateway_process(data, templates, listener, AIGC_LOGIN_MAX_FAILURES_PER_ADDRESS="2"):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            codes = []
            for n in range(3):  # each attempt claims another address
                failed = await client.post(
                    "/auth/login",
                    data={"username": f"nobody{n}", "password": "wrong"},
                    headers={"X-Forwarded-For": f"203.0.113.{n}", "Accept": "application/json"},
                )
                codes.append(failed.json()["code"])
            audit = await client.get(
                "/api/audit",
                params={"action": "auth.login"},
                headers={"Authorization": f"Bearer {token}"},
            )
    # The limit counts the real address: the third attempt is refused whatever it claims.
    assert codes == ["bad_credentials", "bad_credentials", "too_many_attempts"]
    assert {entry["ip"] for entry in audit.json()} == {"127.0.0.1"}
