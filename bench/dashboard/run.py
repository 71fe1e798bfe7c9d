"""bench/dashboard: the instances pages (user and admin) with 10,000 users and 2,000 instances in
the store. Goal (issue 5): server time under 200 ms. The gateway serves from a thread in this
process; times are measured around each request on loopback, so they include the HTTP round
trip. Baseline in the same run: `/healthz` (one store ping) on the same server.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.gateway import make_settings  # noqa: E402
from tests.support.server import bound_socket, serve_in_thread  # noqa: E402

from aigc_gateway.app import create_app  # noqa: E402
from aigc_gateway.auth.core.secrets import hash_password, new_slug  # noqa: E402
from aigc_gateway.bootstrap import bootstrap  # noqa: E402
from aigc_gateway.store.db import Database  # noqa: E402
from aigc_gateway.store.tables import Instance, TemplateRevision, User, Volume  # noqa: E402

USERS, INSTANCES = 10_000, 2_000
HEAVY_USER_INSTANCES = 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def seed(url: str, volumes: Path) -> None:
    """10k users and 2k instances (paused, so no engines run), via bulk inserts."""
    db = Database(url)
    await db.migrate()
    now = datetime.now(UTC)
    hashed = hash_password("bench-password")
    async with db.write() as s:
        s.add(
            TemplateRevision(
                template_id="tiny",
                family="tiny",
                version="1",
                digest="bench",
                source="bench",
                spec={},
                loaded_at=now,
            )
        )
        await s.flush()
        rev = (await s.execute(TemplateRevision.__table__.select())).first()
        assert rev is not None
        users = [
            {
                "id": secrets.token_hex(16),
                "name": f"user{i:05d}",
                "display_name": f"User {i}",
                "is_admin": False,
                "disabled": False,
                "password_hash": hashed,
                "created_at": now,
            }
            for i in range(USERS)
        ]
        await s.execute(User.__table__.insert(), users)
        owners = [users[0]] * HEAVY_USER_INSTANCES + [
            users[1 + i % (USERS - 1)] for i in range(INSTANCES - HEAVY_USER_INSTANCES)
        ]
        vols: dict[str, str] = {}
        for owner in {o["id"] for o in owners}:
            vols[owner] = secrets.token_hex(16)
        await s.execute(
            Volume.__table__.insert(),
            [
                {
                    "id": vid,
                    "user_id": uid,
                    "family": "tiny",
                    "path": str(volumes / uid / "tiny"),
                    "created_at": now,
                }
                for uid, vid in vols.items()
            ],
        )
        await s.execute(
            Instance.__table__.insert(),
            [
                {
                    "id": secrets.token_hex(16),
                    "slug": new_slug(),
                    "name": f"n{i}",
                    "owner_id": o["id"],
                    "template_id": "tiny",
                    "template_revision_id": rev.id,
                    "family": "tiny",
                    "volume_id": vols[o["id"]],
                    "desired_state": "paused",
                    "state": "paused",
                    "reason": "seeded",
                    "generation": 1,
                    "launched_generation": 1,
                    "delete_data": False,
                    "runtime": "local",
                    "created_at": now,
                    "updated_at": now,
                }
                for i, o in enumerate(owners)
            ],
        )
    await db.close()


async def timed(client: httpx.AsyncClient, path: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        r = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        settings = make_settings(Path(tmp), reconcile_interval_s=60.0)
        first = await bootstrap(settings)
        assert first is not None
        await seed(settings.sqlalchemy_url, settings.volumes_dir)
        sock = bound_socket()
        settings = settings.model_copy(
            update={"public_url": f"http://127.0.0.1:{sock.getsockname()[1]}"}
        )
        with serve_in_thread(create_app(settings), sock) as url:
            async with (
                httpx.AsyncClient(base_url=url, timeout=60) as user,
                httpx.AsyncClient(base_url=url, timeout=60) as admin,
            ):
                for client, name, password in (
                    (user, "user00000", "bench-password"),
                    (admin, "admin", first.password),
                ):
                    r = await client.post(
                        "/auth/login",
                        data={"username": name, "password": password, "next": "/api/me"},
                    )
                    assert r.status_code == 303, r.text
                for client, path in ((user, "/"), (admin, "/admin/instances")):
                    await timed(client, path, 3)  # warm-up
                base = await timed(user, "/healthz", args.runs)
                user_page = await timed(user, "/", args.runs)
                admin_page = await timed(admin, "/admin/instances", args.runs)
    print(f"{USERS} users, {INSTANCES} instances in the store (SQLite)")
    print(f"{'page':24} {'p50 ms':>8} {'p95 ms':>8} {'mean':>8}")
    for name, values in (
        ("baseline /healthz", base),
        ("user: My instances", user_page),
        ("admin: all instances", admin_page),
    ):
        print(
            f"{name:24} {pct(values, 0.5):8.1f} {pct(values, 0.95):8.1f} {statistics.mean(values):8.1f}"
        )
    print(
        f"goal p95 < 200 ms: user {pct(user_page, 0.95) < 200}, admin {pct(admin_page, 0.95) < 200}"
    )
    print(
        json.dumps(
            {
                "user_page_ms_p95": round(pct(user_page, 0.95), 1),
                "admin_page_ms_p95": round(pct(admin_page, 0.95), 1),
                "instances": INSTANCES,
                "users": USERS,
                "baseline_healthz_ms_p95": round(pct(base, 0.95), 1),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
