"""The connection-level proxy refuses to start on a uvicorn it was not tested with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aigc_gateway.proxy import server
from aigc_gateway.proxy.server import (
    UnsupportedServer,
    check_uvicorn,
    check_version,
    front_protocol,
)


def test_the_installed_uvicorn_is_supported() -> None:
    check_uvicorn()


@pytest.mark.parametrize("found", ["0.56.0", "0.34.2", "1.0.0", "unknown"])
def test_another_version_is_refused_by_name(found: str) -> None:
    with pytest.raises(UnsupportedServer) as refused:
        check_version(found)
    assert f"uvicorn {found} is installed" in refused.value.message
    assert "uvicorn>=0.55,<0.56" in refused.value.message  # the range pyproject.toml pins


def test_the_front_protocol_is_not_built_on_an_unsupported_uvicorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "_installed", lambda: "0.99.1")
    app = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(trusted_proxies=[])))
    with pytest.raises(UnsupportedServer, match=r"uvicorn 0\.99\.1 is installed"):
        front_protocol(app)


def test_a_missing_part_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn.server

    class Bare:  # a ServerState of a uvicorn that no longer counts connections
        total_requests = 0

    monkeypatch.setattr(uvicorn.server, "ServerState", Bare)
    with pytest.raises(UnsupportedServer, match=r"ServerState\.connections"):
        server.check_parts()
