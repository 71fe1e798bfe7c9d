"""The proxy's access decision: may this credential use this instance? Answered from the access
cache, or — on a miss — from the store, read here so the proxy itself never opens a session.

Host mode (an instance's own host) decides the instance cookie; path mode (``/i/<slug>/`` on the
gateway's host) decides the gateway's session cookie. The same cookie means different things in
the two modes, so they are cached under different keys.
"""

from __future__ import annotations

from aigc_gateway.auth.services.access_cache import AccessCache, Decision, Refused
from aigc_gateway.auth.services.accounts import AccountService
from aigc_gateway.auth.services.instance_access import InstanceAccess, decide_principal
from aigc_gateway.store.db import Database


def access_key(cookie: str, *, path_mode: bool) -> str:
    """The access cache's key of ``cookie`` in that mode."""
    return ("p:" if path_mode else "h:") + cookie


class ProxyAccess:
    """Implements the proxy's ``AccessDecider`` port (``aigc_gateway.proxy.ports``)."""

    def __init__(
        self,
        *,
        db: Database,
        cache: AccessCache,
        accounts: AccountService,
        instance_access: InstanceAccess,
    ) -> None:
        self._db, self._cache, self._accounts = db, cache, accounts
        self._instances = instance_access

    def cached(self, slug: str, key: str) -> Decision | None:
        """The cached answer for ``key`` (see ``access_key``) on instance ``slug``; no I/O."""
        return self._cache.get(slug, key)

    async def decide(
        self, *, slug: str, instance_id: str, owner_id: str, cookie: str, path_mode: bool
    ) -> Decision:
        """The answer, cached for a short while (one store read per cookie and TTL)."""

        async def load() -> Decision:
            if not path_mode:
                return await self._instances.decide(
                    instance_id=instance_id, owner_id=owner_id, cookie=cookie
                )
            who = await self._accounts.principal_for_session(cookie)
            if who is None:
                return Refused(401)
            async with self._db.read() as session:
                return await decide_principal(
                    session, who, instance_id=instance_id, owner_id=owner_id
                )

        return await self._cache.get_or_load(slug, access_key(cookie, path_mode=path_mode), load)
