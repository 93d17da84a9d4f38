"""A near cache: hot entries of a shared backend (Redis) also kept in process for a moment, and
open_cache, which picks the backends. Does I/O only through the backends it wraps.

A cache hit from Redis costs a network round trip and the client library's work, about a third
of a hit's CPU; the same request repeated within `ttl_s` is answered from process memory. Writes
go through to the backend and are kept here too. Entries are answers, never edited in place: the
only staleness is that a refresh (`Cache-Control: no-cache`) made by another process is seen
here up to `ttl_s` later, and an entry may outlive its TTL in Redis by as much. Locks (request
coalescing) always go to the backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from router.routing.policy import CachePolicy
from router.state.cache import Cache, MemoryCache, RedisCache, ResponseCache


class NearCache:
    """`backend` with an in-process copy of what was recently read or written."""

    def __init__(
        self,
        backend: Cache,
        ttl_s: float = 1.0,
        max_entries: int = 2048,
        max_bytes: int = 64 * 1_048_576,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.local = MemoryCache(max_entries, max_bytes, clock)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        near = await self.local.get_many(keys)
        if near and near[0] is not None:  # the preferred key: nothing better can come back
            return near
        found = await self.backend.get_many(keys)
        for key, value in zip(keys, found, strict=True):
            if value is not None:
                await self.local.put(key, value, self.ttl_s)
        # the backend's answer, or what is kept here when the backend has none (or is down)
        return [far if far is not None else kept for far, kept in zip(found, near, strict=True)]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.backend.put(key, value, ttl_s)
        await self.local.put(key, value, min(ttl_s, self.ttl_s))

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        return await self.backend.try_lock(key, token, ttl_s)

    async def unlock(self, key: str, token: str) -> None:
        await self.backend.unlock(key, token)

    async def reachable(self) -> bool:
        return await self.backend.reachable()

    async def aclose(self) -> None:
        await self.backend.aclose()


def open_cache(redis_url: str | None, rules: CachePolicy) -> ResponseCache:
    """Redis when a URL is configured (behind a near cache unless the policy turns it off),
    else the in-process LRU the policy bounds."""
    if redis_url:
        shared = RedisCache(redis_url)
        if rules.near_ttl_seconds <= 0:
            return ResponseCache(shared)
        return ResponseCache(NearCache(shared, rules.near_ttl_seconds))
    return ResponseCache(MemoryCache(rules.memory_max_entries, rules.memory_max_bytes))
