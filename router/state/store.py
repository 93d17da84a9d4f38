"""Redis connections for the shared state (ledger, share window, rate counters) and the breaker
that keeps a failing Redis cheap. Does I/O.

Every flashpro process on one Redis shares the state kept there (router/state/ledger.py,
share.py, counter.py). Redis failures never fail a request: every call is bounded by a short
timeout, and after a failure the breaker skips Redis for a second, then lets one call probe it,
so a hung Redis costs one short timeout a second, not one per call. The state is meanwhile
served by in-process fallbacks; the ledger reconciles what it recorded once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.state.redis_url import parse_redis_url

T = TypeVar("T")

PREFIX = "flashpro:v1"
FAILURES = (RedisError, OSError, asyncio.TimeoutError)

Client = (
    redis.asyncio.Redis
)  # what the shared-state backends hold, so only this module imports redis


def connect_redis(url: str, timeout_s: float) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """A client for REDIS_URL: one server, a Sentinel-watched master, or a Cluster (see
    router/state/redis_url.py). No retries: a retry would double the worst case; the next request
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
    """One Redis or a Sentinel-watched master (router/state/redis_url.py); not a Cluster, whose
    slots would split the ledger's MULTI transactions."""
    client = connect_redis(url, timeout_s)
    if isinstance(client, redis.asyncio.RedisCluster):
        raise ValueError(
            "budgets and share windows need one Redis or a Sentinel master, not a Cluster"
        )
    return client


class Breaker:
    """After a Redis failure, skip Redis for `cool_down_s`, then let one call through to probe
    it: a dead or hung Redis costs one timeout per cool-down, not one per call. Logs one warning
    per outage and one line on recovery."""

    def __init__(
        self,
        what: str,
        log: logging.Logger,
        cool_down_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._log = log
        self._cool_down_s = cool_down_s
        self._clock = clock
        self._retry_at = 0.0
        self.down = False

    def allows(self) -> bool:
        """Whether to call Redis now; while down, True for one probe per cool-down."""
        if not self.down:
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._cool_down_s  # the others skip while this call probes
        return True

    def failed(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + self._cool_down_s
        if not self.down:
            self.down = True
            self._log.warning("%s: Redis unavailable (%r); serving without it", self._what, exc)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            self._log.warning("%s: Redis recovered", self._what)


class StoreDown(Exception):
    """Redis was skipped (`attempted` False: the breaker is open) or failed (True: the command
    may or may not have been applied)."""

    def __init__(self, attempted: bool) -> None:
        super().__init__("Redis skipped" if not attempted else "Redis failed")
        self.attempted = attempted


class Store:
    """One Redis client for the shared state with one breaker, shared by the ledger, the share
    window and the rate counters: an outage trips them together."""

    def __init__(
        self, client: Client, log: logging.Logger | None = None, what: str = "shared state"
    ) -> None:
        self.client = client
        self.breaker = Breaker(what, log or logging.getLogger("flashpro.store"))
        self._closed = False

    @property
    def up(self) -> bool:
        return not self.breaker.down

    async def call(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        """`operation`'s result; StoreDown when the breaker skips Redis or the call fails."""
        if not self.breaker.allows():
            raise StoreDown(attempted=False)
        try:
            result = await operation(self.client)
        except FAILURES as exc:
            self.breaker.failed(exc)
            raise StoreDown(attempted=True) from exc
        self.breaker.succeeded()
        return result

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.aclose()


def open_store(
    url: str | None, timeout_s: float = 0.25, what: str = "shared state"
) -> Store | None:
    """The shared-state store for REDIS_URL, or None without one (state in process memory).
    `what` names it in the breaker's log lines."""
    return Store(connect(url, timeout_s), what=what) if url else None


class Outage:
    """Logs the first failure of an outage and the recovery, not every failed call. New code
    uses `Store`, whose breaker also skips a failing Redis."""

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
