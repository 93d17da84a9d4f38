"""The rate limiter's counters: integers that expire, in process or in Redis. Does I/O (Redis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from router.state.store import FAILURES, PREFIX, Client, Outage


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

    def __init__(self, client: Client, log: logging.Logger | None = None) -> None:
        self._client = client
        self._fallback = MemoryCounter()
        self._outage = Outage("rate limits", log or logging.getLogger("flashpro.store"))

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(f"{PREFIX}:rate:{key}", amount)
                pipe.expire(f"{PREFIX}:rate:{key}", ttl_s)
                total, _ = await pipe.execute()
        except FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.add(key, amount, ttl_s)
        self._outage.ok()
        return int(total)

    async def get(self, key: str) -> int:
        try:
            value = await self._client.get(f"{PREFIX}:rate:{key}")
        except FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.get(key)
        self._outage.ok()
        return int(value or 0)

    async def aclose(self) -> None:
        await self._client.aclose()
