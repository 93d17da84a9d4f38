"""The label store of shadow comparisons, its running totals and the shared gates that bound
their rate and spend; in process or in Redis (shared by every flashpro process). Does I/O (Redis).

With Redis, labels are one sorted set (member: the label's JSON, score: its time), pruned on
every write to `retention_days` and capped at `max_labels` (the oldest go first); running totals
are one hash (`labels`, `agree`, `judge_usd`, `shadow_usd`, `failed:<reason>`,
`skipped:<reason>`); the per-minute count of started comparisons and the day's spend are
expiring counters (router/state/counter.py), the spend in micro-dollars. While Redis is down
or slow (router/state/store.py's breaker) the gates count in this process's memory, and a label
that cannot be written waits in memory (at most PENDING_MAX of them) and goes with the next write
that succeeds, or at shutdown: each one cost three model calls. Only past PENDING_MAX, or when the
process stops with Redis still down, is a label lost (LabelsDown; the comparison counts it as
failed). The app gives this store its own Redis connection and breaker (`open_label_store`), so
a burst of label writes never trips the breaker of the budgets and limits.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from router.state.counter import Counter, MemoryCounter, RedisCounter
from router.state.store import PREFIX, Client, Store, StoreDown, open_store

LABELS_KEY = f"{PREFIX}:learning:labels"
STATS_KEY = f"{PREFIX}:learning:stats"
MEMORY_MAX_LABELS = 10_000  # without Redis, whatever the policy allows
PENDING_MAX = 1_000  # labels kept in memory while Redis cannot take them
LABELS_TIMEOUT_S = 2.0  # nothing waits on a label write: a slow Redis is not a down one
_MICRO = 1_000_000
_DAY_S = 86_400


class LabelsDown(Exception):
    """The label store could not keep a label (Redis failed or is skipped)."""


def _minute_key(now: float) -> str:
    return f"learning:minute:{int(now // 60)}"


def _day_key(now: float, kind: str = "") -> str:
    day = datetime.fromtimestamp(now, UTC).date().isoformat()
    return f"learning:usd:{day}:{kind}" if kind else f"learning:usd:{day}"


class LabelStore(Protocol):
    """Labels of shadow comparisons, their totals and the shared rate and spend gates."""

    async def add(self, label: dict[str, Any], retention_days: float, max_labels: int) -> None:
        """Keep a label (LabelsDown when it cannot), pruning the old and the surplus."""
        ...

    async def labels(self, since_ts: float | None = None) -> list[dict[str, Any]]:
        """Labels kept, oldest first; with `since_ts`, only those from then on (LabelsDown when
        the store cannot be read)."""
        ...

    async def count(self, field: str, amount: float = 1) -> None:
        """Add to a running total (`failed:<reason>`, `judge_usd`...)."""
        ...

    async def totals(self) -> dict[str, float]: ...

    async def recent(self, since_ts: float) -> int:
        """How many labels are from `since_ts` on."""
        ...

    async def start(self, max_per_minute: int) -> bool:
        """Count a comparison starting now; False (and not counted) past `max_per_minute`."""
        ...

    async def spend(self, kind: str, usd: float) -> None:
        """Add to today's (UTC) learning spend, in all and of its kind (shadow or judge)."""
        ...

    async def spent_today(self, kind: str = "") -> float:
        """Today's learning spend: in all, or of one kind."""
        ...

    async def aclose(self) -> None: ...


class _Gates:
    """The per-minute and per-day counters, on any Counter."""

    def __init__(self, counter: Counter, clock: Callable[[], float]) -> None:
        self._counter = counter
        self._clock = clock

    async def start(self, max_per_minute: int) -> bool:
        key = _minute_key(self._clock())
        if await self._counter.add(key, 1, 120) > max_per_minute:
            await self._counter.add(key, -1, 120)
            return False
        return True

    async def spend(self, kind: str, usd: float) -> None:
        if usd > 0:
            now, micro = self._clock(), round(usd * _MICRO)
            await self._counter.add(_day_key(now), micro, 2 * _DAY_S)
            await self._counter.add(_day_key(now, kind), micro, 2 * _DAY_S)

    async def spent_today(self, kind: str = "") -> float:
        return await self._counter.get(_day_key(self._clock(), kind)) / _MICRO


class MemoryLabelStore(_Gates):
    """This process's labels (no Redis), at most MEMORY_MAX_LABELS of them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(MemoryCounter(clock), clock)
        self._labels: list[dict[str, Any]] = []  # by time, oldest first
        self._totals: dict[str, float] = {}

    async def add(self, label: dict[str, Any], retention_days: float, max_labels: int) -> None:
        bisect.insort(self._labels, label, key=_ts)
        oldest = self._clock() - retention_days * _DAY_S
        cap = min(max_labels, MEMORY_MAX_LABELS)
        cut = bisect.bisect_left(self._labels, oldest, key=_ts)
        del self._labels[: max(cut, len(self._labels) - cap)]

    async def labels(self, since_ts: float | None = None) -> list[dict[str, Any]]:
        return [label for label in self._labels if since_ts is None or label["ts"] >= since_ts]

    async def count(self, field: str, amount: float = 1) -> None:
        self._totals[field] = self._totals.get(field, 0) + amount

    async def totals(self) -> dict[str, float]:
        return dict(self._totals)

    async def recent(self, since_ts: float) -> int:
        return sum(1 for label in self._labels if label["ts"] >= since_ts)

    async def aclose(self) -> None:
        return None


class RedisLabelStore(_Gates):
    """Labels, totals and gates in Redis, shared by every flashpro process on it."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        super().__init__(RedisCounter(store), clock)
        self._store = store
        self._fallback = MemoryLabelStore(clock)  # totals while Redis is down
        self._pending: deque[tuple[bytes, float]] = deque()  # (member, ts) not written yet
        self._limits = (30.0, 1)  # the latest (retention_days, max_labels), for the flush
        self._flushing = asyncio.Lock()  # one flush at a time: each takes what is waiting

    @property
    def pending(self) -> int:
        """Labels waiting in memory for Redis."""
        return len(self._pending)

    async def add(self, label: dict[str, Any], retention_days: float, max_labels: int) -> None:
        self._limits = (retention_days, max_labels)
        if len(self._pending) >= PENDING_MAX:
            raise LabelsDown("the label store is unavailable and its buffer is full")
        self._pending.append((orjson.dumps(label), float(label["ts"])))
        await self.flush()

    async def flush(self) -> bool:
        """Write the labels waiting in memory, in one transaction; True when none is left."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        batch = list(self._pending)
        retention_days, max_labels = self._limits
        oldest = self._clock() - retention_days * _DAY_S

        async def write(client: Client) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.zadd(LABELS_KEY, dict(batch))
                pipe.zremrangebyscore(LABELS_KEY, "-inf", f"({oldest}")
                pipe.zremrangebyrank(LABELS_KEY, 0, -max_labels - 1)
                await pipe.execute()

        try:
            await self._store.call(write)
        except StoreDown:
            return False  # kept: a later write, or the shutdown, takes them
        for _ in batch:  # others may have been added while this one was written
            self._pending.popleft()
        return not self._pending

    async def labels(self, since_ts: float | None = None) -> list[dict[str, Any]]:
        low = "-inf" if since_ts is None else since_ts

        async def read(client: Client) -> list[Any]:
            return list(await client.zrangebyscore(LABELS_KEY, low, "+inf"))

        try:
            rows = await self._store.call(read)
        except StoreDown as exc:
            raise LabelsDown("the label store is unavailable") from exc
        return [orjson.loads(row) for row in rows]

    async def count(self, field: str, amount: float = 1) -> None:
        async def incr(client: Client) -> None:
            await client.hincrbyfloat(STATS_KEY, field, amount)

        try:
            await self._store.call(incr)
        except StoreDown:
            await self._fallback.count(field, amount)

    async def totals(self) -> dict[str, float]:
        async def read(client: Client) -> dict[Any, Any]:
            return dict(await client.hgetall(STATS_KEY))

        try:
            raw = await self._store.call(read)
        except StoreDown:
            return await self._fallback.totals()
        found = {_text(k): float(v) for k, v in raw.items()}
        for field, amount in (await self._fallback.totals()).items():  # counted while down
            found[field] = found.get(field, 0) + amount
        return found

    async def recent(self, since_ts: float) -> int:
        async def read(client: Client) -> int:
            return int(await client.zcount(LABELS_KEY, since_ts, "+inf"))

        try:
            return await self._store.call(read)
        except StoreDown:
            return 0

    async def aclose(self) -> None:
        if not await self.flush():
            lost = len(self._pending)
            self._pending.clear()
            await self._fallback.count("failed:store", lost)
        await self._store.aclose()


def _ts(label: dict[str, Any]) -> float:
    return float(label["ts"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_labels(shared: Store | None) -> LabelStore:
    """The label store on the shared Redis store, or in this process's memory without one."""
    return MemoryLabelStore() if shared is None else RedisLabelStore(shared)


def open_label_store(url: str | None) -> LabelStore:
    """The server's label store: its own Redis connection and breaker (LABELS_TIMEOUT_S), so a
    slow label write never trips the budgets' and limits' breaker; memory without REDIS_URL."""
    return open_labels(open_store(url, LABELS_TIMEOUT_S, what="learning labels"))
