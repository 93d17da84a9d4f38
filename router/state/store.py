"""Redis connections for the shared state (ledger, share window, rate counters). Does I/O.

Every flashpro process on one Redis shares the state kept there (router/state/ledger.py,
share.py, counter.py). Redis failures never fail a request: the operation is logged (once per
outage) and served by an in-process fallback, so during an outage each process keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.state.redis_url import parse_redis_url

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


class Outage:
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
