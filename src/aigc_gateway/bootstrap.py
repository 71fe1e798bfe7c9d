"""First-start set-up shared by ``serve`` and ``init``: migrate, create the first admin."""

from __future__ import annotations

from dataclasses import dataclass

from aigc_gateway.auth.core.secrets import new_password
from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database
from aigc_gateway.store.users import count_users, create_token, create_user


@dataclass(frozen=True, slots=True)
class FirstAdmin:
    name: str
    password: str
    token: str | None


async def bootstrap(settings: Settings, *, admin_name: str = "admin") -> FirstAdmin | None:
    """Apply migrations; if the store has no user yet, create an admin and return its
    credentials (to be printed once, never logged). Idempotent."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    try:
        await db.migrate()
        async with db.write() as session:
            if await count_users(session):
                return None
            password = new_password()
            user = await create_user(session, name=admin_name, password=password, is_admin=True)
            token = (
                await create_token(session, user=user, name="first-start") if settings.dev else None
            )
        return FirstAdmin(admin_name, password, token)
    finally:
        await db.close()
