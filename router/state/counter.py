"""The rate limiter's counters: integers that expire, in process or in Redis. Does I/O (Redis).

While Redis is unreachable (router/state/store.py's breaker) each process counts in its own
memory, so a key's limit holds per process; the windows are a minute, nothing to reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from router.state.store import PREFIX, Client, Store, StoreDown


class Counter(Protocol):
    """Integer counters that expire: the windows' request and token counts."""

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        """Add `amount` and return the new total."""
        ...

    async def get(self, key: str) -> int: ...

    async def aclose(self) -> None: ...


class MemoryCounter:
    """This process's counters (no Redis, or Redis down)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)

    def _prune(self, now: float) -> None:
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        now = self._clock()
        self._prune(now)
        count, expires = self._counts.get(key, (0, now + ttl_s))
        if expires <= now:
            count, expires = 0, now + ttl_s
        self._counts[key] = (count + amount, expires)
        return count + amount

    async def get(self, key: str) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > self._clock() else 0

    async def aclose(self) -> None:
        return None


class RedisCounter:
    """The rate limiter's counters: INCRBY with an expiry, one round trip per call."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._fallback = MemoryCounter()

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        async def incr(client: Client) -> int:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incrby(f"{PREFIX}:rate:{key}", amount)
                pipe.expire(f"{PREFIX}:rate:{key}", ttl_s)
                total, _ = await pipe.execute()
            return int(total)

        try:
            return await self._store.call(incr)
        except StoreDown:
            return await self._fallback.add(key, amount, ttl_s)

    async def get(self, key: str) -> int:
        async def read(client: Client) -> int:
            return int(await client.get(f"{PREFIX}:rate:{key}") or 0)

        try:
            return await self._store.call(read)
        except StoreDown:
            return await self._fallback.get(key)

    async def aclose(self) -> None:
        await self._store.aclose()
