"""The store on both backends: SQLite (embedded) and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select

from aigc_gateway.auth.core.secrets import new_id, new_slug
from aigc_gateway.domain.states import DesiredState, InstanceState, transition
from aigc_gateway.errors import Conflict
from aigc_gateway.store import instances as repo
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import ApiToken, Instance, User
from aigc_gateway.store.users import create_token, create_user, user_by_name, user_for_token


@pytest.fixture
async def db(database_url: str) -> Database:
    database = Database(database_url)
    await database.migrate()
    yield database  # type: ignore[misc]
    await database.close()


async def test_migrations_apply_and_are_idempotent(db: Database) -> None:
    await db.migrate()
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {
        "users",
        "teams",
        "api_tokens",
        "template_revisions",
        "volumes",
        "instances",
        "events",
    } <= tables
    assert "alembic_version" in tables


async def test_users_and_tokens(db: Database) -> None:
    async with db.write() as s:
        user = await create_user(s, name="alice", password="pw")
        secret = await create_token(s, user=user, name="t", scopes="read")
    async with db.write() as s:
        with pytest.raises(Conflict):
            await create_user(s, name="alice", password="other")
    now = datetime.now(UTC)
    async with db.read() as s:
        found = await user_for_token(s, secret, now)
        assert found is not None and found[0].name == "alice" and found[1] == "read"
        assert await user_for_token(s, secret + "x", now) is None
        stored = (await s.scalars(select(ApiToken.token_hash))).all()
        assert secret not in stored  # only the hash is kept
    async with db.write() as s:
        token = await s.scalar(select(ApiToken))
        assert token is not None
        token.expires_at = now - timedelta(seconds=1)
    async with db.read() as s:
        assert await user_for_token(s, secret, now) is None
    async with db.write() as s:
        token = await s.scalar(select(ApiToken))
        assert token is not None
        token.expires_at, token.revoked_at = None, now
    async with db.read() as s:
        assert await user_for_token(s, secret, now) is None
    async with db.write() as s:
        secret2 = await create_token(s, user=await user_by_name(s, "alice"), name="t2")
        (await user_by_name(s, "alice")).disabled = True
    async with db.read() as s:
        assert await user_for_token(s, secret2, now) is None


async def test_revisions_and_volumes_are_idempotent(db: Database) -> None:
    spec = {"id": "demo", "version": "1"}
    async with db.write() as s:
        a = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d1", source="f", spec=spec
        )
        b = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d1", source="f", spec=spec
        )
        c = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d2", source="f", spec=spec
        )
        user = await create_user(s, name="bob", password=None)
        v1 = await repo.volume_for(s, user_id=user.id, family="demo", path="/x")
        v2 = await repo.volume_for(s, user_id=user.id, family="demo", path="/y")
    assert a == b != c
    assert v1.id == v2.id and v2.path == "/x"
    async with db.read() as s:
        assert (await repo.revision(s, c)).spec == spec


async def _make_instance(db: Database, owner: User, name: str, rev: int, vol: str) -> str:
    now = datetime.now(UTC)
    async with db.write() as s:
        inst = Instance(
            id=new_id(),
            slug=new_slug(),
            name=name,
            owner_id=owner.id,
            template_id="demo",
            template_revision_id=rev,
            family="demo",
            volume_id=vol,
            desired_state=DesiredState.RUNNING.value,
            state=InstanceState.PENDING.value,
            runtime="local",
            created_at=now,
            updated_at=now,
        )
        s.add(inst)
    return inst.id


async def test_transitions_are_checked_against_the_stored_state(db: Database) -> None:
    async with db.write() as s:
        owner = await create_user(s, name="carol", password=None)
        rev = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d", source="f", spec={}
        )
        vol = (await repo.volume_for(s, user_id=owner.id, family="demo", path="/v")).id
    iid = await _make_instance(db, owner, "a", rev, vol)
    async with db.read() as s:
        inst = await repo.get(s, iid)
    assert inst is not None
    async with db.write() as s:
        ev = await repo.apply_transition(
            s, inst, transition(InstanceState.PENDING, InstanceState.STARTING, "go")
        )
    assert ev.id > 0 and ev.target_state == "starting"
    # A second writer holding the stale "pending" view is refused instead of overwriting.
    with pytest.raises(Conflict):
        async with db.write() as s:
            await repo.apply_transition(
                s, inst, transition(InstanceState.PENDING, InstanceState.PAUSED, "x")
            )
    async with db.read() as s:
        events = await repo.events_after(s, iid)
        assert [e.target_state for e in events] == ["starting"]
        assert (await repo.get(s, iid)).state == "starting"  # type: ignore[union-attr]
        assert events[0].at.tzinfo is not None


async def test_names_are_unique_per_owner_among_live_instances(db: Database) -> None:
    async with db.write() as s:
        owner = await create_user(s, name="dave", password=None)
        rev = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d", source="f", spec={}
        )
        vol = (await repo.volume_for(s, user_id=owner.id, family="demo", path="/v")).id
    first = await _make_instance(db, owner, "same", rev, vol)
    with pytest.raises(Exception):  # noqa: B017,PT011 - the backend's IntegrityError, wrapped
        await _make_instance(db, owner, "same", rev, vol)
    async with db.write() as s:
        inst = await s.get(Instance, first)
        assert inst is not None
        inst.state = InstanceState.DELETED.value
    await _make_instance(db, owner, "same", rev, vol)  # a deleted instance frees its name


async def test_serialised_limit_check_under_concurrency(db: Database) -> None:
    """The create transaction (lock owner, count, insert) lets exactly `limit` of 20 through."""
    async with db.write() as s:
        owner = await create_user(s, name="erin", password=None)
        rev = await repo.record_revision(
            s, template_id="demo", family="demo", version="1", digest="d", source="f", spec={}
        )
        vol = (await repo.volume_for(s, user_id=owner.id, family="demo", path="/v")).id

    async def create(n: int) -> bool:
        try:
            async with db.write() as s:
                await repo.lock_user(s, owner.id)
                repo.ensure_owner_may_create(await repo.count_live(s, owner.id), 4)
                now = datetime.now(UTC)
                s.add(
                    Instance(
                        id=new_id(),
                        slug=new_slug(),
                        name=f"n{n}",
                        owner_id=owner.id,
                        template_id="demo",
                        template_revision_id=rev,
                        family="demo",
                        volume_id=vol,
                        desired_state="running",
                        state="pending",
                        runtime="local",
                        created_at=now,
                        updated_at=now,
                    )
                )
        except Conflict:
            return False
        return True

    results = await asyncio.gather(*(create(n) for n in range(20)))
    assert results.count(True) == 4
    async with db.read() as s:
        assert await repo.count_live(s, owner.id) == 4
