from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import hypothesis  # noqa: F401 - see below
import pytest

from aigc_gateway.app import create_app
from aigc_gateway.bootstrap import bootstrap
from aigc_gateway.settings import Settings
from tests.support.gateway import Api, add_user, make_settings, stop_engines
from tests.support.leaks import leaked_task_check, no_leaked_tasks  # noqa: F401 - fixtures
from tests.support.pg import create_database, postgres_server
from tests.support.server import bound_socket, serve_in_thread
from tests.support.tools import apply_needs_markers, require_tool

# Python 3.11.7 corrupts its AST recursion counter when two threads convert ASTs at once
# (CPython gh-106905, fixed in 3.11.8). pytest rewrites the hypothesis plugin's modules with
# `ast.parse` when they are first imported; importing hypothesis here, while the session is still
# single-threaded, keeps that from racing the gateway's server thread.


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``pytest.mark.needs(*tools)``: skip here, fail under CI, before any fixture runs."""
    apply_needs_markers(item)


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    require_tool("postgresql")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    base: str = request.getfixturevalue("pg_base_url")
    return asyncio.run(create_database(base))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket bound to a free port of 127.0.0.1 for the test's gateway process
    (:func:`~tests.support.process.gateway_process`); the port stays the test's across restarts."""
    with bound_socket() as sock:
        yield sock


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    admin_token: str
    alice: str
    bob: str


@pytest.fixture
def ledger_clock() -> Callable[[], datetime] | None:
    """The clock the gateway's ledger reads; override it (e.g. with a
    :class:`~tests.support.gateway.FakeClock`) to decide how long instances hold what."""
    return None


@pytest.fixture
def proxy_fast_path() -> bool:
    """Which proxy serves instance traffic: the connection-level one (``proxy/front.py``) or,
    parametrized to False, the ASGI one alone. Modules about the proxy run under both."""
    return True


@pytest.fixture
def gateway_settings(
    request: pytest.FixtureRequest, tmp_path: Path, proxy_fast_path: bool
) -> Settings:
    """Test settings; parametrize indirectly with a dict of overrides."""
    overrides = {"proxy_fast_path": proxy_fast_path, **getattr(request, "param", {})}
    return make_settings(tmp_path, **overrides)


@pytest.fixture
def gateway(
    gateway_settings: Settings, ledger_clock: Callable[[], datetime] | None
) -> Iterator[RunningGateway]:
    """The real app on a real socket, with an admin and two users (alice, bob)."""
    sock = bound_socket()
    settings = gateway_settings.model_copy(
        update={"public_url": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    )
    first = asyncio.run(bootstrap(settings))
    assert first is not None
    assert first.token is not None
    alice = asyncio.run(add_user(settings, "alice"))
    bob = asyncio.run(add_user(settings, "bob"))
    app = create_app(settings, ledger_clock=ledger_clock, migrated=True)  # as serve: bootstrap did
    try:
        with serve_in_thread(app, sock) as url:
            yield RunningGateway(url, settings, first.token, alice, bob)
    finally:
        stop_engines(settings)


@pytest.fixture
async def alice(gateway: RunningGateway) -> AsyncIterator[Api]:
    api = Api(gateway.url, gateway.alice)
    yield api
    await api.aclose()


@pytest.fixture
async def bob(gateway: RunningGateway) -> AsyncIterator[Api]:
    api = Api(gateway.url, gateway.bob)
    yield api
    await api.aclose()


@pytest.fixture
async def admin(gateway: RunningGateway) -> AsyncIterator[Api]:
    api = Api(gateway.url, gateway.admin_token)
    yield api
    await api.aclose()
