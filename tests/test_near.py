"""The near cache in front of Redis (router/state/near.py): repeated hits stay in process for a
moment, writes go through, the preferred key still wins, and an outage serves what is kept."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from router.routing.policy import CachePolicy
from router.state.cache import MemoryCache, RedisCache
from router.state.near import NearCache, open_cache
from tests.conftest import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingBackend(MemoryCache):
    """An in-memory backend that counts reads and can play dead."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.reads = 0
        self.dead = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.reads += 1
        if self.dead:
            return [None] * len(keys)
        return await super().get_many(keys)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_repeated_hit_stays_in_process_until_the_near_ttl(clock: Clock) -> None:
    backend = CountingBackend(clock)
    await backend.put("k", b"answer", 3600)
    near = NearCache(backend, ttl_s=1.0, clock=clock)
    assert await near.get_many(["k"]) == [b"answer"]
    assert await near.get_many(["k"]) == [b"answer"]
    assert backend.reads == 1
    await backend.put("k", b"refreshed elsewhere", 3600)  # another process's no-cache refresh
    clock.now += 1.5
    assert await near.get_many(["k"]) == [b"refreshed elsewhere"]
    assert backend.reads == 2


async def test_writes_go_through_and_are_kept_no_longer_than_the_entry(clock: Clock) -> None:
    backend = CountingBackend(clock)
    near = NearCache(backend, ttl_s=5.0, clock=clock)
    await near.put("k", b"fresh", 2)
    assert await backend.get_many(["k"]) == [b"fresh"]
    reads = backend.reads
    assert await near.get_many(["k"]) == [b"fresh"]
    assert backend.reads == reads  # served here
    clock.now += 3  # past the entry's own TTL: gone here and in the backend
    assert await near.get_many(["k"]) == [None]


async def test_the_preferred_key_is_asked_of_the_backend(clock: Clock) -> None:
    backend = CountingBackend(clock)
    near = NearCache(backend, ttl_s=1.0, clock=clock)
    await near.put("pro", b"pro answer", 60)  # kept here: a stronger tier's entry
    await backend.put("flash", b"flash answer", 60)  # the request's own tier, only in Redis
    assert await near.get_many(["flash", "pro"]) == [b"flash answer", b"pro answer"]


async def test_an_outage_serves_what_is_kept(clock: Clock) -> None:
    backend = CountingBackend(clock)
    near = NearCache(backend, ttl_s=1.0, clock=clock)
    await near.put("pro", b"pro answer", 60)
    backend.dead = True
    assert await near.get_many(["flash", "pro"]) == [None, b"pro answer"]


async def test_locks_are_always_the_backends(clock: Clock) -> None:
    backend = CountingBackend(clock)
    near = NearCache(backend, clock=clock)
    assert await near.try_lock("k", "a", 10)
    assert not await backend.try_lock("k", "b", 10)
    await near.unlock("k", "a")
    assert await backend.try_lock("k", "b", 10)


async def test_redis_gets_a_near_cache_unless_the_policy_turns_it_off(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    near = open_cache(url, CachePolicy())
    direct = open_cache(url, CachePolicy(near_ttl_seconds=0))
    try:
        assert isinstance(near.backend, NearCache) and isinstance(near.backend.backend, RedisCache)
        assert isinstance(direct.backend, RedisCache)
        await near.backend.put("flashpro-test:near", b"x", 5)
        assert await direct.backend.get_many(["flashpro-test:near"]) == [b"x"]
    finally:
        await near.aclose()
        await direct.aclose()
