"""The strong-tier share window: requests, and those at the cap's tier or above, over a window;
in process or in Redis. Does I/O (Redis).

While Redis is unreachable (router/state/store.py's breaker) each process counts in its own
memory; the window then forgets those requests when it slides past them.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from router.state.store import PREFIX, Client, Store, StoreDown


class ShareWindow(Protocol):
    """Counts of requests, and of those served at the cap's tier or above, over a window."""

    async def share(self, window_s: int, now: float) -> float | None: ...

    async def add(self, strong: bool, window_s: int, now: float) -> None: ...


class MemoryShareWindow:
    def __init__(self) -> None:
        self._events: deque[tuple[float, bool]] = deque()

    def _prune(self, window_s: int, now: float) -> None:
        while self._events and self._events[0][0] <= now - window_s:
            self._events.popleft()

    async def share(self, window_s: int, now: float) -> float | None:
        self._prune(window_s, now)
        if not self._events:
            return None
        return sum(strong for _, strong in self._events) / len(self._events)

    async def add(self, strong: bool, window_s: int, now: float) -> None:
        self._prune(window_s, now)
        self._events.append((now, strong))


class RedisShareWindow:
    """Requests per time bucket (a hash of `total` and `strong`); the window sums its buckets."""

    BUCKETS = 30

    def __init__(self, store: Store, namespace: str = "") -> None:
        self._prefix = f"{PREFIX}:share:{namespace}" if namespace else f"{PREFIX}:share"
        self._store = store
        self._fallback = MemoryShareWindow()

    def _bucket(self, window_s: int, now: float) -> tuple[int, int]:
        width = max(1, window_s // self.BUCKETS)
        return width, int(now // width)

    async def share(self, window_s: int, now: float) -> float | None:
        width, current = self._bucket(window_s, now)
        count = max(1, window_s // width)
        keys = [f"{self._prefix}:{window_s}:{b}" for b in range(current - count + 1, current + 1)]

        async def read(client: Client) -> list[list[bytes | None]]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, ["total", "strong"])
                return list(await pipe.execute())

        try:
            rows = await self._store.call(read)
        except StoreDown:
            return await self._fallback.share(window_s, now)
        total = sum(int(t or 0) for t, _ in rows)
        strong = sum(int(s or 0) for _, s in rows)
        return strong / total if total else None

    async def add(self, strong: bool, window_s: int, now: float) -> None:
        width, current = self._bucket(window_s, now)
        key = f"{self._prefix}:{window_s}:{current}"

        async def count(client: Client) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "total", 1)
                pipe.hincrby(key, "strong", int(strong))
                pipe.expire(key, window_s + 2 * width)
                await pipe.execute()

        try:
            await self._store.call(count)
        except StoreDown:
            await self._fallback.add(strong, window_s, now)
