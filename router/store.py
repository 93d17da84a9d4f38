"""Redis connections, and the state shared through them: the spend ledger, the strong-tier
share window and rate counters. Does I/O.

Every flashpro process on one Redis shares one ledger: spend is added with INCRBYFLOAT on a day
and a month key per scope (with expiry) in one MULTI transaction, so concurrent processes never
lose an update; a budget can be overshot only by the requests already in flight when it runs
out. Redis failures never fail a request: the operation is logged (once per outage) and served
by an in-process fallback, so during an outage each process keeps its own ledger and window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.controls import MemoryLedger, MemoryShareWindow, periods
from router.ratelimit import MemoryCounter
from router.redis_url import parse_redis_url

_PREFIX = "flashpro:v1"
_DAY_S = 2 * 86_400  # a day key outlives its day, so late readers near midnight still see it
_MONTH_S = 32 * 86_400
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def connect_redis(url: str, timeout_s: float) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """A client for REDIS_URL: one server, a Sentinel-watched master, or a Cluster (see
    router/redis_url.py). No retries: a retry would double the worst case; the next request
    retries."""
    target = parse_redis_url(url)
    retry = Retry(NoBackoff(), 0)
    if target.kind == "single":
        return redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
            health_check_interval=0,
        )
    if target.kind == "cluster":
        return redis.asyncio.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
        )
    timeouts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinels = redis.asyncio.Sentinel(  # type: ignore[no-untyped-call]
        list(target.hosts),
        sentinel_kwargs={"password": target.sentinel_password, **timeouts},
        **timeouts,
    )
    master: redis.asyncio.Redis = sentinels.master_for(
        target.service or "",
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        retry=retry,
        **timeouts,
    )
    return master


def connect(url: str, timeout_s: float = 0.25) -> redis.asyncio.Redis:
    """One Redis or a Sentinel-watched master (router/redis_url.py); not a Cluster, whose
    slots would split the ledger's MULTI transactions."""
    client = connect_redis(url, timeout_s)
    if isinstance(client, redis.asyncio.RedisCluster):
        raise ValueError(
            "budgets and share windows need one Redis or a Sentinel master, not a Cluster"
        )
    return client


class _Outage:
    """Logs the first failure of an outage and the recovery, not every failed call."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self._what = what
        self._log = log
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if not self.down:
            self._log.warning("%s: Redis failed (%r); using this process's memory", self._what, exc)
        self.down = True

    def ok(self) -> None:
        if self.down:
            self._log.warning("%s: Redis is back", self._what)
        self.down = False


class RedisLedger:
    def __init__(self, client: redis.asyncio.Redis, log: logging.Logger | None = None) -> None:
        self._client = client
        self._fallback = MemoryLedger()
        self._outage = _Outage("spend ledger", log or logging.getLogger("flashpro.store"))

    @staticmethod
    def _keys(scope: str, now: float) -> tuple[str, str]:
        day, month = periods(now)
        return f"{_PREFIX}:spend:{scope}:d:{day}", f"{_PREFIX}:spend:{scope}:m:{month}"

    async def spent(self, scopes: Sequence[str], now: float) -> list[tuple[float, float]]:
        keys = [key for scope in scopes for key in self._keys(scope, now)]
        try:
            values = await self._client.mget(keys)
        except _FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.spent(scopes, now)
        self._outage.ok()
        amounts = [float(v) if v is not None else 0.0 for v in values]
        return [(amounts[i], amounts[i + 1]) for i in range(0, len(amounts), 2)]

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for scope in scopes:
                    day, month = self._keys(scope, now)
                    pipe.incrbyfloat(day, usd)
                    pipe.expire(day, _DAY_S)
                    pipe.incrbyfloat(month, usd)
                    pipe.expire(month, _MONTH_S)
                await pipe.execute()
        except _FAILURES as exc:
            self._outage.failed(exc)
            await self._fallback.add(scopes, usd, now)
            return
        self._outage.ok()

    async def aclose(self) -> None:
        await self._client.aclose()


class RedisShareWindow:
    """Requests per time bucket (a hash of `total` and `strong`); the window sums its buckets."""

    BUCKETS = 30

    def __init__(self, client: redis.asyncio.Redis, log: logging.Logger | None = None) -> None:
        self._client = client
        self._fallback = MemoryShareWindow()
        self._outage = _Outage("share window", log or logging.getLogger("flashpro.store"))

    def _bucket(self, window_s: int, now: float) -> tuple[int, int]:
        width = max(1, window_s // self.BUCKETS)
        return width, int(now // width)

    async def share(self, window_s: int, now: float) -> float | None:
        width, current = self._bucket(window_s, now)
        count = max(1, window_s // width)
        keys = [f"{_PREFIX}:share:{window_s}:{b}" for b in range(current - count + 1, current + 1)]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, ["total", "strong"])
                rows = await pipe.execute()
        except _FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.share(window_s, now)
        self._outage.ok()
        total = sum(int(t or 0) for t, _ in rows)
        strong = sum(int(s or 0) for _, s in rows)
        return strong / total if total else None

    async def add(self, strong: bool, window_s: int, now: float) -> None:
        width, current = self._bucket(window_s, now)
        key = f"{_PREFIX}:share:{window_s}:{current}"
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "total", 1)
                pipe.hincrby(key, "strong", int(strong))
                pipe.expire(key, window_s + 2 * width)
                await pipe.execute()
        except _FAILURES as exc:
            self._outage.failed(exc)
            await self._fallback.add(strong, window_s, now)
            return
        self._outage.ok()


class RedisCounter:
    """The rate limiter's counters: INCRBY with an expiry, one round trip per call."""

    def __init__(self, client: redis.asyncio.Redis, log: logging.Logger | None = None) -> None:
        self._client = client
        self._fallback = MemoryCounter()
        self._outage = _Outage("rate limits", log or logging.getLogger("flashpro.store"))

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(f"{_PREFIX}:rate:{key}", amount)
                pipe.expire(f"{_PREFIX}:rate:{key}", ttl_s)
                total, _ = await pipe.execute()
        except _FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.add(key, amount, ttl_s)
        self._outage.ok()
        return int(total)

    async def get(self, key: str) -> int:
        try:
            value = await self._client.get(f"{_PREFIX}:rate:{key}")
        except _FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.get(key)
        self._outage.ok()
        return int(value or 0)

    async def aclose(self) -> None:
        await self._client.aclose()
