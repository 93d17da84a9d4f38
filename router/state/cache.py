"""The response cache: keys (pure), Redis and in-memory backends, miss coalescing. Does I/O (Redis).

A key is a hash of what decides the answer (messages and answer-changing parameters, never
`stream`, `user` or the alias asked for) with the tier that serves it, in the caller's namespace.
Redis failures never fail a request: every backend call is bounded by a short timeout, a failure
reads as a miss, and after one the backend skips Redis for a moment (one warning per outage).

Identical concurrent misses call the upstream once: in this process they wait on the first
request's flight; across processes the first takes a Redis `SET NX PX` lock and the others poll
for its entry, each up to `coalesce_wait_seconds`, then call the upstream themselves. Streams
read and fill the cache but do not coalesce: a stream waiting for another's whole answer would
lose what streaming is for, its time to first token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import orjson
import redis.asyncio

from router.routing.callers import bearer_digest
from router.routing.policy import CachePolicy, Policy, Tier
from router.schemas import ChatRequest
from router.state.store import Breaker, connect_redis

CacheStatus = Literal["hit", "miss", "bypass"]
T = TypeVar("T")

_PREFIX = "flashpro:cache:v1"
_COMPLETE = frozenset({"stop", "tool_calls"})  # finish reasons of an answer worth keeping


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer and who produced it; `cost_usd` is what it cost at that tier's prices."""

    body: dict[str, Any]
    tier: str
    model: str
    cost_usd: float

    def dumps(self) -> bytes:
        record = {"tier": self.tier, "model": self.model, "cost_usd": self.cost_usd}
        return orjson.dumps({**record, "body": self.body})

    @classmethod
    def loads(cls, raw: bytes) -> Entry | None:
        """The entry, or None for a record this version cannot read (treated as a miss)."""
        try:
            data = orjson.loads(raw)
            entry = cls(data["body"], str(data["tier"]), str(data["model"]), data["cost_usd"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        return entry if isinstance(entry.body, dict) else None


@dataclass(frozen=True, slots=True)
class CachePlan:
    """How one request uses the cache: the keys it may be served from (its own tier's first)."""

    keys: tuple[str, ...] = ()
    read: bool = False
    write: bool = False
    ttl_s: int = 0
    max_entry_bytes: int = 0
    wait_s: float = 0.0

    @property
    def key(self) -> str:
        """Where this request's own answer is stored."""
        return self.keys[0]

    @property
    def status(self) -> CacheStatus:
        """What a response that did not hit reports: `miss` if the cache was in play."""
        return "miss" if self.keys and (self.read or self.write) else "bypass"

    @property
    def coalesce(self) -> bool:
        return bool(self.keys) and self.read and self.write and self.wait_s > 0


BYPASS = CachePlan()


def request_digest(request: ChatRequest) -> bytes:
    """A hash of what decides the answer, independent of JSON key order and whitespace.

    Left out: the model asked for (the tier served goes into the key instead), `stream`,
    `stream_options`, `user` and every field flashpro does not relay (request ids, metadata).
    """
    params = {k: v for k, v in request.upstream_params().items() if k != "user"}
    if params.get("n") == 1:
        del params["n"]
    messages = [message.model_dump(exclude_none=True) for message in request.messages]
    canonical = orjson.dumps([messages, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


def cache_key(namespace: str, digest: bytes, tier_name: str, tier: Tier, upstream: str = "") -> str:
    """The key of an answer to the request `digest` names, produced by `tier` at the upstream
    `upstream` names (a hash of its base URL and account: an answer from a simulator, another
    base URL or another account never serves this one)."""
    served = "\0".join(
        (tier_name, tier.model, tier.thinking, tier.reasoning_effort or "", upstream)
    )
    return f"{_PREFIX}:{namespace}:{hashlib.sha256(digest + served.encode()).hexdigest()[:40]}"


def namespace_of(authorization: str | None, tenants: Mapping[str, str]) -> str:
    """The caller's namespace: its tenant, else a hash of its bearer key, else `anonymous`."""
    digest = bearer_digest(authorization)
    if digest is None:
        return "anonymous"
    tenant = tenants.get(digest)
    if tenant is not None:
        return "tenant:" + hashlib.sha256(tenant.encode()).hexdigest()[:32]
    return "key:" + digest[:32]


def directives(cache_control: str | None) -> tuple[bool, bool]:
    """(read, write) under a request's Cache-Control: `no-cache` refreshes, `no-store` skips."""
    given = {part.split("=", 1)[0].strip().lower() for part in (cache_control or "").split(",")}
    if "no-store" in given:
        return False, False
    if "no-cache" in given:
        return False, True
    return True, True


def repeatable(request: ChatRequest, rules: CachePolicy) -> bool:
    """One answer that asks to be repeatable (temperature 0 or a seed), or the policy opts in."""
    if (request.n or 1) != 1:
        return False
    return rules.sampled_requests or request.temperature == 0 or request.seed is not None


def plan_for(
    policy: Policy,
    request: ChatRequest,
    tier: str,
    headers: Mapping[str, str],
    upstreams: Mapping[str, str] | None = None,
    digest: Callable[[], bytes] | None = None,
) -> CachePlan:
    """The cache plan for a request routed to `tier`; `headers` have lower-case names;
    `upstreams` maps each tier to its upstream identity (router/routing/routed.py). `digest` gives
    the request's own in another wire format (the Messages door's): keys are canonical per
    format, so an answer in one format never serves a request in another."""
    rules = policy.cache
    if not rules.enabled or not repeatable(request, rules):
        return BYPASS
    read, write = directives(headers.get("cache-control"))
    if not (read or write):
        return BYPASS
    namespace = namespace_of(headers.get("authorization"), rules.tenants)

    def keys_of(request: ChatRequest) -> tuple[str, ...]:
        names = list(policy.tiers)
        servers = names[names.index(tier) :] if rules.serve_from_stronger_tiers else [tier]
        canonical = digest() if digest is not None else request_digest(request)
        return tuple(
            cache_key(namespace, canonical, name, policy.tiers[name], ids.get(name, ""))
            for name in servers
        )

    ids = upstreams or {}
    memo = f"cache-keys:{tier}:{namespace}:{ids.get(tier, '')}"
    keys = request.derived(memo, keys_of, policy)
    return CachePlan(
        keys, read, write, rules.ttl_seconds, rules.max_entry_bytes, rules.coalesce_wait_seconds
    )


def is_complete(body: Mapping[str, Any]) -> bool:
    """Every choice finished normally (not cut by `length` or a content filter) with something
    in it: DeepSeek's JSON mode may answer blank content (spaces) with `stop`, which a client
    retries rather than keeps (api-docs.deepseek.com/guides/json_mode)."""
    choices = body.get("choices") or ()
    return bool(choices) and all(
        choice.get("finish_reason") in _COMPLETE and _answered(choice) for choice in choices
    )


def _answered(choice: Mapping[str, Any]) -> bool:
    message = choice.get("message") or {}
    content = message.get("content")
    return bool(message.get("tool_calls")) or (isinstance(content, str) and bool(content.strip()))


class Cache(Protocol):
    """Where entries live: bytes under keys with a TTL, and a per-key lock for coalescing.

    Implementations never raise for a backend failure: a read fails as a miss, a lock as
    granted (so a request never waits on a cache that is not there), a write is dropped.
    """

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool: ...

    async def unlock(self, key: str, token: str) -> None: ...

    async def reachable(self) -> bool:
        """For /readyz: whether the backend answers now."""
        ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """In-process LRU bounded by entries and bytes; the default when no Redis is configured."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1_048_576,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        out: list[bytes | None] = []
        for key in keys:
            item = self._entries.get(key)
            if item is not None and item[1] <= now:
                self._drop(key)
                item = None
            if item is not None:
                self._entries.move_to_end(key)
            out.append(None if item is None else item[0])
        return out

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._drop(key)
        if len(value) > self._max_bytes:
            return
        self._entries[key] = (value, self._clock() + ttl_s)
        self.bytes += len(value)
        while len(self._entries) > self._max_entries or self.bytes > self._max_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.bytes -= len(old)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self.bytes -= len(item[0])

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            return False
        self._locks[key] = (token, now + ttl_s)
        return True

    async def unlock(self, key: str, token: str) -> None:
        if self._locks.get(key, ("", 0.0))[0] == token:
            del self._locks[key]

    async def reachable(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0


_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisCache:
    """Entries in Redis (shared by every flashpro process), with short timeouts and a breaker."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.05,
        cool_down_s: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        self._client = connect_redis(url, timeout_s)
        self._breaker = Breaker(
            "response cache", log or logging.getLogger("flashpro.cache"), cool_down_s
        )

    @property
    def down(self) -> bool:
        return self._breaker.down

    async def _guard(self, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        if not self._breaker.allows():
            return fallback
        try:
            result = await operation()
        except Exception as exc:  # the cache is an optimisation: any failure is a miss
            self._breaker.failed(exc)
            return fallback
        self._breaker.succeeded()
        return result

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        async def mget() -> list[bytes | None]:
            if isinstance(self._client, redis.asyncio.RedisCluster):  # keys span hash slots
                values = await self._client.mget_nonatomic(list(keys))
            else:
                values = await self._client.mget(list(keys))
            return [value.encode() if isinstance(value, str) else value for value in values]

        return await self._guard(mget, [None] * len(keys))

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        async def put() -> None:
            await self._client.set(key, value, px=max(1, int(ttl_s * 1000)))

        await self._guard(put, None)

    async def try_lock(self, key: str, token: str, ttl_s: float) -> bool:
        async def lock() -> bool:
            px = max(1, int(ttl_s * 1000))
            return bool(await self._client.set(key + ":lock", token, nx=True, px=px))

        return await self._guard(lock, True)

    async def unlock(self, key: str, token: str) -> None:
        async def unlock() -> None:
            await self._client.eval(_UNLOCK, 1, key + ":lock", token)

        await self._guard(unlock, None)

    async def reachable(self) -> bool:
        """A ping that bypasses the breaker, so readiness reports a recovery at once."""
        try:
            return bool(await self._client.ping())
        except Exception:  # the cache is an optimisation: report it, never raise
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class _Flight:
    """An upstream call in progress in this process, that identical requests wait for."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    entry: Entry | None = None


class ResponseCache:
    """The cache as the pipeline uses it: look up a plan's keys, store, take turns on a miss."""

    def __init__(self, backend: Cache, poll_s: float = 0.01) -> None:
        self.backend = backend
        self._poll_s = poll_s
        self._flights: dict[str, _Flight] = {}

    @classmethod
    def in_memory(cls) -> ResponseCache:
        return cls(MemoryCache())

    async def lookup(self, keys: Sequence[str]) -> Entry | None:
        """The first entry found among `keys`, in their order."""
        for raw in await self.backend.get_many(keys):
            if raw is not None and (entry := Entry.loads(raw)) is not None:
                return entry
        return None

    async def store(self, plan: CachePlan, entry: Entry) -> bool:
        """Store under the plan's own key unless the entry is too big; True if stored."""
        raw = entry.dumps()
        if len(raw) > plan.max_entry_bytes:
            return False
        await self.backend.put(plan.key, raw, plan.ttl_s)
        flight = self._flights.get(plan.key)
        if flight is not None:
            flight.entry = entry
        return True

    @asynccontextmanager
    async def turn(self, plan: CachePlan) -> AsyncIterator[Entry | None]:
        """Wait until this request may call the upstream for its key.

        Yields the entry an identical request produced meanwhile, or None: then the caller
        calls the upstream itself (and stores the answer before leaving the block).
        """
        deadline = time.monotonic() + plan.wait_s
        flight = self._flights.get(plan.key)
        if flight is not None:
            yield await _follow(flight, deadline)
            return
        flight = self._flights[plan.key] = _Flight()
        token = uuid.uuid4().hex
        locked = False
        try:
            flight.entry, locked = await self._lock_or_entry(plan, token, deadline)
            yield flight.entry
        finally:
            if locked:
                await self.backend.unlock(plan.key, token)
            del self._flights[plan.key]
            flight.done.set()

    async def _lock_or_entry(
        self, plan: CachePlan, token: str, deadline: float
    ) -> tuple[Entry | None, bool]:
        """Take the cross-process lock, or poll for its holder's entry until the deadline."""
        pause = self._poll_s
        waited = False
        while True:
            if await self.backend.try_lock(plan.key, token, max(plan.wait_s, 1.0)):
                # the holder we waited for may have stored its answer just before it let go
                entry = await self.lookup((plan.key,)) if waited else None
                return entry, True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, False
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 1.5, 0.1)
            waited = True
            entry = await self.lookup((plan.key,))
            if entry is not None:
                return entry, False

    async def aclose(self) -> None:
        await self.backend.aclose()


async def _follow(flight: _Flight, deadline: float) -> Entry | None:
    """The entry the flight produced, or None if it failed or took longer than the deadline."""
    try:
        await asyncio.wait_for(flight.done.wait(), max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        return None
    return flight.entry
