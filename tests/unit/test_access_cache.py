"""The access cache: a ``clear`` (access changed) wins over a lookup that was in flight."""

from __future__ import annotations

import asyncio

from aigc_gateway.auth.services.access_cache import AccessCache, Allowed, Decision, Refused

ALLOWED = Allowed(user_id="u1", user_name="alice", may_operate=True)
REVOKED = Refused(403)


class BlockingLoader:
    """A store lookup that read "allowed" and is held until ``release`` is set; then every later
    load reads the store after the revocation: "refused"."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> Decision:
        self.calls += 1
        if self.calls > 1:
            return REVOKED
        self.started.set()
        await self.release.wait()
        return ALLOWED


async def test_a_clear_during_a_load_keeps_its_stale_answer_out() -> None:
    cache, load = AccessCache(ttl_s=3600), BlockingLoader()
    first = asyncio.create_task(cache.get_or_load("inst", "cookie", load))
    await load.started.wait()
    cache.clear()  # the share is revoked while the lookup is in flight
    load.release.set()
    assert await first == ALLOWED  # the request that asked before the change gets its answer
    assert cache.get("inst", "cookie") is None  # but the answer is not kept
    assert await cache.get_or_load("inst", "cookie", load) == REVOKED


async def test_a_request_after_the_clear_does_not_join_the_stale_load() -> None:
    cache, load = AccessCache(ttl_s=3600), BlockingLoader()
    first = asyncio.create_task(cache.get_or_load("inst", "cookie", load))
    await load.started.wait()
    cache.clear()
    second = asyncio.create_task(cache.get_or_load("inst", "cookie", load))
    load.release.set()
    assert await second == REVOKED  # it read the store after the change
    await first
    assert cache.get("inst", "cookie") == REVOKED


async def test_without_a_clear_one_load_serves_everyone_and_is_kept() -> None:
    cache, load = AccessCache(ttl_s=3600), BlockingLoader()
    first = asyncio.create_task(cache.get_or_load("inst", "cookie", load))
    await load.started.wait()
    second = asyncio.create_task(cache.get_or_load("inst", "cookie", load))
    load.release.set()
    assert await first == await second == ALLOWED
    assert load.calls == 1
    assert cache.get("inst", "cookie") == ALLOWED
