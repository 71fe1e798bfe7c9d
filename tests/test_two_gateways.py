"""Two gateway processes on one real PostgreSQL (and one data folder): either serves every
instance; one drives each at a time (its lease); when the holder is killed with SIGKILL the other
takes its instances over within the lease's expiry; events and states made by one are seen
through the other."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from aigc_gateway.settings import Settings
from tests.support.gateway import Api, add_user, stop_engines_async, write_templates
from tests.support.pg import create_database
from tests.support.process import gateway_process
from tests.support.server import bound_socket

LEASE_TTL_S = 3


@dataclass
class TwoGateways:
    """Two gateway processes on one database and data folder, and Alice (an admin) on each."""

    url: str
    a: Api
    b: Api
    process: dict[int, subprocess.Popen[str]]
    """pid → the gateway process."""
    by_pid: dict[int, Api]
    """pid → Alice's client of that process."""
    tokens: dict[str, str]
    """The other users' tokens, by name."""


@contextlib.asynccontextmanager
async def two_gateways(
    tmp_path: Path, pg_base_url: str, *, users: tuple[str, ...] = (), **env: str
) -> AsyncIterator[TwoGateways]:
    """A fresh database, two gateways serving it (with ``env`` added to theirs, lease expiry
    ``LEASE_TTL_S``); their engines are stopped after."""
    url = await create_database(pg_base_url)
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates, database_url=url)
    token = await add_user(settings, "alice", admin=True)
    tokens = {name: await add_user(settings, name) for name in users}
    env = {"AIGC_DATABASE_URL": url, "AIGC_LEASE_TTL_S": str(LEASE_TTL_S), **env}
    try:
        with (
            bound_socket() as sock_a,
            bound_socket() as sock_b,
            gateway_process(data, templates, sock_a, **env) as proc_a,
            gateway_process(data, templates, sock_b, **env) as proc_b,
        ):
            a = Api(f"http://127.0.0.1:{sock_a.getsockname()[1]}", token)
            b = Api(f"http://127.0.0.1:{sock_b.getsockname()[1]}", token)
            try:
                yield TwoGateways(
                    url,
                    a,
                    b,
                    {proc_a.pid: proc_a, proc_b.pid: proc_b},
                    {proc_a.pid: a, proc_b.pid: b},
                    tokens,
                )
            finally:
                await a.aclose()
                await b.aclose()
    finally:
        await stop_engines_async(settings)


async def _lease_holder(url: str, instance_id: str) -> str | None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        holder: str | None = await conn.fetchval(
            "SELECT holder FROM instance_leases WHERE instance_id = $1 AND expires_at > now()",
            instance_id,
        )
        return holder
    finally:
        await conn.close()


async def test_two_gateways_share_instances_and_take_over_a_killed_one(
    tmp_path: Path, pg_base_url: str
) -> None:
    async with two_gateways(tmp_path, pg_base_url, users=("bob",)) as pair:
        a, b, url = pair.a, pair.b, pair.url
        bob_token = pair.tokens["bob"]
        # Created through A, seen running through B (its events reach B's stream).
        inst = await a.create("tiny")
        await b.wait_state(inst["id"], "running")
        # Paused through B, seen through A; resumed through B.
        await b.act(inst["id"], "pause")
        await a.wait_state(inst["id"], "paused")
        await b.act(inst["id"], "resume")
        await a.wait_state(inst["id"], "running")
        await _race(a, b, inst["id"])
        await _revoked_through_a_closes_b(a, b, inst["id"], bob_token)
        holder = await _lease_holder(url, inst["id"])
        assert holder is not None
        pid = int(holder.split(":")[-2])
        assert pid in pair.process
        killed, survivor = pair.process[pid], (b if pair.by_pid[pid] is a else a)
        killed_at = datetime.now(UTC)
        killed.kill()  # SIGKILL: its leases are never given back, they expire
        killed.wait(10)
        # The survivor takes the instance over and drives it: pause and resume work.
        await survivor.act(inst["id"], "pause")
        await survivor.wait_state(inst["id"], "paused", timeout=LEASE_TTL_S + 30)
        new_holder = await _lease_holder(url, inst["id"])
        assert new_holder is not None and new_holder != holder
        await survivor.act(inst["id"], "resume")
        await survivor.wait_state(inst["id"], "running")
        # Not driven by both: the whole history is one legal sequence of moves.
        events = (await survivor.client.get(f"/api/instances/{inst['id']}/events")).json()
        moves = [(e["from"], e["to"]) for e in events if e["kind"] == "transition"]
        for (_, before), (after, _) in itertools.pairwise(moves):
            assert before == after, moves
        await survivor.client.delete(f"/api/instances/{inst['id']}")
        await survivor.wait_state(inst["id"], "deleted")
        starts = sum(1 for _, to in moves if to == "starting")
        await _ledger_unbroken(url, inst["id"], starts=starts, across=killed_at)


async def _ledger_unbroken(url: str, instance_id: str, *, starts: int, across: datetime) -> None:
    """The instance's ledger: one run of rows per start (rows of one run are joined end to
    start, cut only at midnight), all closed, none overlapping, and the run during which the
    lease holder was killed covers that instant: the takeover lost no second of usage."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch(
            "SELECT start_at, end_at, closed_by, duration_ms FROM usage_intervals"
            " WHERE instance_id = $1 AND resource <> 'storage' ORDER BY start_at, id",
            instance_id,
        )
    finally:
        await conn.close()
    assert rows and all(r["end_at"] is not None for r in rows), rows
    runs: list[tuple[datetime, datetime]] = []
    for r in rows:
        start, end = r["start_at"], r["end_at"]
        assert end >= start and r["duration_ms"] == round((end - start).total_seconds() * 1000)
        if runs and start < runs[-1][1]:
            raise AssertionError(f"ledger rows overlap: {rows}")
        if runs and start == runs[-1][1] and r["closed_by"] != "correction":
            runs[-1] = (runs[-1][0], end)  # a midnight cut: the same run goes on
        else:
            runs.append((start, end))
    assert len(runs) == starts, (runs, starts)
    assert any(start < across < end for start, end in runs), (runs, across)


async def _race(a: Api, b: Api, instance_id: str) -> None:
    """Pauses and resumes sent through both gateways at once, twice over: each is taken or
    refused (409), and the instance settles running. Whether both processes tried to drive it
    shows in its history, which the caller checks is one chain of legal moves."""
    actions = ["pause", "resume"] * 4
    answers = await asyncio.gather(
        *(
            (a if n % 2 else b).client.post(f"/api/instances/{instance_id}/{action}")
            for n, action in enumerate(actions)
        )
    )
    assert all(r.status_code in (202, 409) for r in answers), [r.text for r in answers]
    await b.act(instance_id, "resume")
    await a.wait_state(instance_id, "running")


REVOKE_SEEN_S = 2.0
"""How soon a share revoked through one gateway closes what it opened through another."""


async def _revoked_through_a_closes_b(a: Api, b: Api, instance_id: str, bob_token: str) -> None:
    """Alice shares with Bob through A; Bob follows the instance's events through B; Alice
    takes the share back through A: Bob's stream on B ends within 2 s, and B refuses him."""
    r = await a.client.post(f"/api/instances/{instance_id}/shares", json={"user": "bob"})
    assert r.status_code == 201
    bob = Api(str(b.client.base_url).rstrip("/"), bob_token)
    try:
        assert (await bob.client.get(f"/api/instances/{instance_id}")).status_code == 200
        async with bob.client.stream(
            "GET", f"/api/instances/{instance_id}/events/stream", timeout=None
        ) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            await anext(lines)  # the stream is open and serving
            revoke = await a.client.delete(f"/api/instances/{instance_id}/shares/{r.json()['id']}")
            assert revoke.status_code == 204
            async with asyncio.timeout(REVOKE_SEEN_S):
                async for _ in lines:
                    pass  # the backlog, then the end of the stream
        assert (await bob.client.get(f"/api/instances/{instance_id}")).status_code == 404
    finally:
        await bob.aclose()


ONE_CARD = [
    {
        "id": "GPU-aaaa",
        "type": "rtx4090",
        "memory_gib": 24,
        "pool": "onprem",
        "pool_rank": 1,
        "price_per_hour": 0.9,
    }
]


async def test_two_gateways_never_book_one_gpu_twice(tmp_path: Path, pg_base_url: str) -> None:
    """Both gateways declare the same single card; instances wanting it are created through
    both at once: one runs on it, the others queue; when it pauses (through the other
    gateway), the next starts on the card, never two at a time."""
    async with two_gateways(tmp_path, pg_base_url, AIGC_GPUS=json.dumps(ONE_CARD)) as pair:
        a, b = pair.a, pair.b
        made = await asyncio.gather(
            *(api.create("tiny-gpu-any", name=f"g{n}") for n, api in enumerate([a, b, a]))
        )
        ids = [m["id"] for m in made]
        for i in ids:
            await a.wait_state(i, "running", "queued")
        ran: set[str] = set()
        while len(ran) < len(ids):
            states = {i: (await b.get(i)) for i in ids}
            holding = [i for i, st in states.items() if st["state"] in ("starting", "running")]
            assert len(holding) <= 1, states  # the one card, booked once
            if not holding:  # between a release and the next start: whichever it is
                queued = [i for i, st in states.items() if st["state"] == "queued"]
                waits = [asyncio.create_task(a.wait_state(i, "running")) for i in queued]
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                continue
            (one,) = holding
            assert (await a.wait_state(one, "running"))["gpu"]["gpu_ids"] == ["GPU-aaaa"]
            ran.add(one)
            await (b if len(ran) % 2 else a).act(one, "pause")  # through either gateway
            await a.wait_state(one, "paused")
        # Every instance had the card in turn.
        events = [(await a.client.get(f"/api/instances/{i}/events")).json() for i in ids]
        assert all(
            any(e["kind"] == "transition" and e["to"] == "running" for e in evs) for evs in events
        )


async def test_the_gpu_queue_is_one_queue_across_gateways(tmp_path: Path, pg_base_url: str) -> None:
    """The card is busy; X queues through one gateway, then Y through the other, the one
    driving the card's holder. When the holder pauses, the card goes to X, the earlier waiter,
    though the process that freed it drives Y: one queue in the store's order, not one per
    process."""
    async with two_gateways(tmp_path, pg_base_url, AIGC_GPUS=json.dumps(ONE_CARD)) as pair:
        a, b, url, by_pid = pair.a, pair.b, pair.url, pair.by_pid

        async def driver(instance_id: str) -> Api:
            holder = await _lease_holder(url, instance_id)
            assert holder is not None
            return by_pid[int(holder.split(":")[-2])]

        z = await a.create("tiny-gpu-any", name="z")
        await a.wait_state(z["id"], "running")
        frees = await driver(z["id"])
        other = b if frees is a else a
        x = await other.create("tiny-gpu-any", name="x")
        await other.wait_state(x["id"], "queued")
        y = await frees.create("tiny-gpu-any", name="y")
        await frees.wait_state(y["id"], "queued")
        assert await driver(x["id"]) is other and await driver(y["id"]) is frees
        await frees.act(z["id"], "pause")
        ran = await other.wait_state(x["id"], "running")
        assert ran["gpu"]["gpu_ids"] == ["GPU-aaaa"]
        assert (await frees.get(y["id"]))["state"] == "queued"
        await other.act(x["id"], "pause")  # then Y's turn
        await frees.wait_state(y["id"], "running")
