"""Real third-party engines through the gateway (``make check-engines``, not ``make check``).

The engines are installed by the Makefile under ``.engines/`` (``AIGC_TEST_ENGINES`` names the
folder). One gateway and one InvokeAI instance serve the whole module: InvokeAI takes tens of
seconds to start, and every test here needs a running one. The gateway, the users and the
clients are the normal suite's own helpers (``tests/support``), imported, not copied.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import RunningGateway
from tests.support.gateway import Api, add_user, make_settings, stop_engines
from tests.support.server import bound_socket, serve_in_thread

from aigc_gateway.bootstrap import bootstrap
from aigc_gateway.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ENGINES = Path(os.environ.get("AIGC_TEST_ENGINES") or REPO / ".engines")
INVOKEAI = ENGINES / "invokeai"
START_TIMEOUT_S = 600  # a first start on a busy 2-core host creates InvokeAI's database


def invokeai_template(install_dir: Path) -> str:
    """The shipped template, installed at ``install_dir`` and without its GPU request (these
    tests run it on the CPU: a model-free graph needs no GPU)."""
    raw = yaml.safe_load((REPO / "templates" / "invokeai.yaml").read_text(encoding="utf-8"))
    raw["launch"]["install_dir"] = str(install_dir)
    del raw["resources"]["gpu"]
    return yaml.safe_dump(raw, allow_unicode=True)


def engine_settings(tmp: Path) -> Settings:
    program = INVOKEAI / "venv" / "bin" / "invokeai-web"
    if not program.exists():
        pytest.fail(f"InvokeAI is not installed at {program}: run `make check-engines`")
    folder = tmp / "engine-templates"
    folder.mkdir()
    (folder / "invokeai.yaml").write_text(invokeai_template(INVOKEAI), encoding="utf-8")
    return make_settings(tmp, templates_dir=folder, proxy_fast_path=True)


async def _start(url: str, token: str, template: str) -> dict[str, Any]:
    api = Api(url, token)
    try:
        created = await api.create(template)
        return await api.wait_state(created["id"], "running", "failed", timeout=START_TIMEOUT_S)
    finally:
        await api.aclose()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The real app on a real socket, with an admin and two users (alice, bob)."""
    sock = bound_socket()
    settings = engine_settings(tmp_path_factory.mktemp("gateway")).model_copy(
        update={"public_url": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    )
    first = asyncio.run(bootstrap(settings))
    assert first is not None and first.token is not None
    alice = asyncio.run(add_user(settings, "alice"))
    bob = asyncio.run(add_user(settings, "bob"))
    from aigc_gateway.app import create_app

    try:
        with serve_in_thread(create_app(settings), sock) as url:
            yield RunningGateway(url, settings, first.token, alice, bob)
    finally:
        stop_engines(settings)


@pytest.fixture(scope="module")
def invokeai(gateway: RunningGateway) -> dict[str, Any]:
    """alice's running InvokeAI instance (as ``GET /api/instances/{id}`` shows it)."""
    inst = asyncio.run(_start(gateway.url, gateway.alice, "invokeai"))
    assert inst["state"] == "running", inst.get("reason")
    return inst
