"""The service queries behind routes and pages that have no query of their own: the GPU
listing's instance labels and an instance's usage ledger, asked of the real service and store
(the routes' answers are covered in test_gpu_scheduling and test_accounting)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.errors import Forbidden, NotFound
from aigc_gateway.gateway import Gateway, open_gateway
from aigc_gateway.lifecycle.service import CreateRequest, InstanceLabel
from aigc_gateway.store.users import create_user
from tests.support.gateway import make_settings, stop_engines_async


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose controller is not started: instances stay ``pending``, no engine runs."""
    settings = make_settings(tmp_path, watch_templates=False)
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    opened = await open_gateway(settings, sleep=time.sleep)
    yield opened
    await opened.close()
    await stop_engines_async(settings)


async def person(gw: Gateway, name: str, *, admin: bool = False) -> Principal:
    async with gw.db.write() as session:
        user = await create_user(session, name=name, password=f"pw-{name}", is_admin=admin)
    return Principal(user_id=user.id, name=name, is_admin=admin)


async def test_labels_name_each_instance_and_its_owner_for_administrators(gw: Gateway) -> None:
    alice, root = await person(gw, "alice"), await person(gw, "root", admin=True)
    inst, _ = await gw.instances.create(alice, CreateRequest("tiny", name="one"))
    unknown = "0" * 32
    labels = await gw.instances.labels(root, {inst.id, unknown})
    assert labels == {inst.id: InstanceLabel(name="one", owner="alice", pid=None)}
    assert await gw.instances.labels(root, set()) == {}
    with pytest.raises(Forbidden):
        await gw.instances.labels(alice, {inst.id})


async def test_usage_is_for_those_who_may_view_the_instance(gw: Gateway) -> None:
    alice, bob = await person(gw, "alice"), await person(gw, "bob")
    root = await person(gw, "root", admin=True)
    inst, _ = await gw.instances.create(alice, CreateRequest("tiny"))
    assert await gw.instances.usage(alice, inst.id) == []  # never ran: no ledger rows
    assert await gw.instances.usage(root, inst.id) == []
    with pytest.raises(NotFound):
        await gw.instances.usage(bob, inst.id)
    with pytest.raises(NotFound):
        await gw.instances.usage(alice, "not-an-id")
