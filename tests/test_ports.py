"""No port is chosen free and bound later: the gateway is handed a bound socket (``serve --fd``),
and the programs that bind their port themselves (PostgreSQL, nginx) are started again on
another port when theirs was taken in between."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import nginx, pg
from tests.support.process import gateway_process
from tests.support.server import bound_socket
from tests.support.tools import require_tool


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another program is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def _first_taken_then_free(taken: int) -> Iterator[int]:
    yield taken
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        yield port


def test_the_gateway_serves_on_the_socket_it_is_handed_across_restarts(
    tmp_path: Path, listener: socket.socket
) -> None:
    from tests.support.gateway import write_templates

    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/healthz"
    for _ in range(2):
        with gateway_process(data, templates, listener):
            assert httpx.get(url, timeout=10).status_code == 200


def test_serve_refuses_an_fd_that_is_no_socket(tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as file:
        out = subprocess.run(
            [sys.executable, "-m", "aigc_gateway", "serve", "--dev", "--fd", str(file.fileno())],
            pass_fds=(file.fileno(),),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 2
    assert "--fd" in out.stderr and "is not a TCP socket" in out.stderr


def test_postgresql_starts_again_when_its_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    require_tool("postgresql")
    ports = _first_taken_then_free(taken)
    monkeypatch.setattr(pg, "_unused_port", lambda: next(ports))
    with pg.postgres_server() as url:
        port = int(url.rsplit(":", 1)[1])
        assert port != taken
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass


def test_nginx_starts_again_when_its_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    require_tool("nginx")
    ports = _first_taken_then_free(taken)
    monkeypatch.setattr(nginx, "_unused_port", lambda: next(ports))
    with (
        bound_socket() as gateway,  # nginx only needs its address to start
        nginx.nginx_in_front(gateway_url=f"http://127.0.0.1:{gateway.getsockname()[1]}") as front,
    ):
        assert front.port != taken
        with front.connect():
            pass
