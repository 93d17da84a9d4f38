"""The cache's pure key function and plan, the memory and Redis backends, and coalescing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from router.routing.policy import Policy, load_policy
from router.schemas import ChatRequest
from router.state.cache import (
    BYPASS,
    Cache,
    CachePlan,
    Entry,
    MemoryCache,
    RedisCache,
    ResponseCache,
    directives,
    is_complete,
    namespace_of,
    plan_for,
    request_digest,
)
from tests.conftest import RedisServer, free_port


def chat(raw: bytes | dict[str, Any]) -> ChatRequest:
    data = orjson.loads(raw) if isinstance(raw, bytes) else raw
    return ChatRequest.model_validate(data)


def policy(**rules: Any) -> Policy:
    base, _ = load_policy(None)
    return base.model_copy(update={"cache": base.cache.model_copy(update=rules)})


BASE = {
    "model": "auto",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0,
}


def key_of(request: dict[str, Any], tier: str = "flash", auth: str | None = "Bearer k1") -> str:
    headers = {} if auth is None else {"authorization": auth}
    return plan_for(policy(sampled_requests=True), chat(request), tier, headers).key


# --- keys (pure) ---


def test_key_ignores_json_key_order_and_whitespace() -> None:
    a = b'{"model":"auto","temperature":0,"messages":[{"role":"user","content":"Hi"}]}'
    b = b'{ "messages" : [ {"content": "Hi",\n "role": "user"} ],\n "temperature": 0.0, "model": "auto" }'
    assert request_digest(chat(a)) == request_digest(chat(b))


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "alice"},
        {"request_id": "r-123", "metadata": {"trace": "x"}},
        {"n": 1},
        {"model": "auto-quality"},  # the alias asked for: the served tier is in the key instead
    ],
)
def test_key_ignores_fields_that_do_not_change_the_answer(extra: dict[str, Any]) -> None:
    assert key_of({**BASE, **extra}) == key_of(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"seed": 3},
        {"max_tokens": 10},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi!"},
            ]
        },
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_key_changes_with_what_changes_the_answer(change: dict[str, Any]) -> None:
    assert key_of({**BASE, **change}) != key_of(BASE)


def test_key_depends_on_the_tier_served() -> None:
    assert key_of(BASE, "flash") != key_of(BASE, "pro") != key_of(BASE, "pro-max")


def test_tiers_with_the_same_model_but_other_effort_have_other_keys() -> None:
    strong = policy()
    keys = plan_for(strong, chat(BASE), "pro", {}).keys
    assert len(set(keys)) == 2  # pro, pro-max (same model, effort high vs max)


def test_keys_are_namespaced_by_caller() -> None:
    assert key_of(BASE, auth="Bearer k1") != key_of(BASE, auth="Bearer k2")
    assert key_of(BASE, auth=None) != key_of(BASE, auth="Bearer k1")
    assert key_of(BASE, auth=None) == key_of(BASE, auth="Basic abc")


def test_namespace_is_a_hash_of_the_key_or_its_tenant() -> None:
    digest_a = hashlib.sha256(b"key-a").hexdigest()
    digest_b = hashlib.sha256(b"key-b").hexdigest()
    tenants = {digest_a: "team-a", digest_b: "team-a"}
    assert namespace_of("Bearer key-a", tenants) == namespace_of("bearer  key-b ", tenants)
    assert namespace_of("Bearer key-c", tenants) != namespace_of("Bearer key-a", tenants)
    assert "key-c" not in namespace_of("Bearer key-c", tenants)
    assert namespace_of(None, tenants) == namespace_of("Bearer ", tenants) == "anonymous"


def test_policy_rejects_tenant_keys_that_are_not_hashes() -> None:
    with pytest.raises(ValueError, match="sha256"):
        policy().cache.model_validate({"tenants": {"sk-plain-key": "team"}})


# --- plans (pure) ---


def test_only_repeatable_single_answers_are_cached_by_default() -> None:
    p = policy()
    assert plan_for(p, chat(BASE), "flash", {}).status == "miss"
    assert plan_for(p, chat({**BASE, "temperature": 0.7, "seed": 1}), "flash", {}).keys
    assert plan_for(p, chat({**BASE, "temperature": 0.7}), "flash", {}) is BYPASS
    assert (
        plan_for(p, chat({k: v for k, v in BASE.items() if k != "temperature"}), "flash", {})
        is BYPASS
    )
    assert plan_for(p, chat({**BASE, "n": 2}), "flash", {}) is BYPASS
    sampled = policy(sampled_requests=True)
    assert plan_for(sampled, chat({**BASE, "temperature": 0.7}), "flash", {}).keys
    assert plan_for(policy(enabled=False), chat(BASE), "flash", {}) is BYPASS


def test_stronger_tiers_serve_weaker_ones_only() -> None:
    p = policy()
    flash = plan_for(p, chat(BASE), "flash", {}).keys
    pro = plan_for(p, chat(BASE), "pro", {}).keys
    assert len(flash) == 3 and flash[1:] == pro  # own tier first, then pro, pro-max
    assert flash[0] not in pro  # a Flash answer never serves Pro
    assert (
        plan_for(policy(serve_from_stronger_tiers=False), chat(BASE), "flash", {}).keys == flash[:1]
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        ("max-age=0", (True, True)),
        ("no-cache", (False, True)),
        ("No-Cache, max-age=0", (False, True)),
        ("no-store", (False, False)),
        ("no-cache, no-store", (False, False)),
    ],
)
def test_cache_control_directives(header: str | None, expected: tuple[bool, bool]) -> None:
    assert directives(header) == expected


def test_plans_follow_cache_control() -> None:
    p = policy()
    refresh = plan_for(p, chat(BASE), "flash", {"cache-control": "no-cache"})
    assert (refresh.read, refresh.write, refresh.coalesce) == (False, True, False)
    assert plan_for(p, chat(BASE), "flash", {"cache-control": "no-store"}) is BYPASS
    assert plan_for(p, chat(BASE), "flash", {}).coalesce


@pytest.mark.parametrize(
    ("reasons", "complete"),
    [
        (["stop"], True),
        (["tool_calls"], True),
        (["length"], False),
        (["stop", "length"], False),
        ([None], False),
        ([], False),
    ],
)
def test_only_answers_that_finished_normally_are_complete(
    reasons: list[str | None], complete: bool
) -> None:
    def choice(i: int, reason: str | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "An answer."}
        if reason == "tool_calls":
            message = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}
        return {"index": i, "finish_reason": reason, "message": message}

    body = {"choices": [choice(i, r) for i, r in enumerate(reasons)]}
    assert is_complete(body) is complete


@pytest.mark.parametrize("content", ["", "   ", "\n\t ", None])
def test_blank_answers_are_never_complete(content: str | None) -> None:
    message = {"role": "assistant", "content": content}
    assert not is_complete({"choices": [{"index": 0, "finish_reason": "stop", "message": message}]})


def test_entries_round_trip_and_garbage_reads_as_a_miss() -> None:
    entry = Entry({"choices": [], "usage": {"prompt_tokens": 3}}, "pro", "deepseek/x", 0.25)
    assert Entry.loads(entry.dumps()) == entry
    assert Entry.loads(b"not json") is None
    assert Entry.loads(b'{"body": []}') is None


# --- backends ---


async def test_memory_cache_is_bounded_by_entries_and_bytes() -> None:
    cache = MemoryCache(max_entries=3, max_bytes=100)
    for i in range(5):
        await cache.put(f"k{i}", b"x" * 10, 60)
    assert len(cache) == 3
    assert await cache.get_many(["k0", "k1", "k2", "k3", "k4"]) == [
        None,
        None,
        b"x" * 10,
        b"x" * 10,
        b"x" * 10,
    ]
    await cache.get_many(["k2"])  # k2 is now the most recently used
    await cache.put("big", b"y" * 85, 60)  # 30 + 85 > 100: evicts k3, then k4
    assert await cache.get_many(["k2", "k3", "k4", "big"]) == [b"x" * 10, None, None, b"y" * 85]
    assert cache.bytes == 95
    await cache.put("huge", b"z" * 101, 60)
    assert await cache.get_many(["huge"]) == [None] and cache.bytes == 95


async def test_memory_cache_entries_expire() -> None:
    now = [100.0]
    cache = MemoryCache(clock=lambda: now[0])
    await cache.put("k", b"v", 10)
    assert await cache.get_many(["k"]) == [b"v"]
    now[0] = 111.0
    assert await cache.get_many(["k"]) == [None] and len(cache) == 0


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Cache]:
    cache: Cache = (
        MemoryCache() if request.param == "memory" else RedisCache(redis_server.url, timeout_s=0.5)
    )
    yield cache
    await cache.aclose()


async def test_backend_stores_with_ttl_and_locks_per_key(backend: Cache) -> None:
    key = f"test:{uuid.uuid4().hex}"
    assert await backend.get_many([key, key + "x"]) == [None, None]
    await backend.put(key, b"answer", 0.2)
    assert await backend.get_many([key + "x", key]) == [None, b"answer"]
    assert await backend.try_lock(key, "t1", 5)
    assert not await backend.try_lock(key, "t2", 5)
    await backend.unlock(key, "t2")  # not the holder: no effect
    assert not await backend.try_lock(key, "t2", 5)
    await backend.unlock(key, "t1")
    assert await backend.try_lock(key, "t2", 5)
    await asyncio.sleep(0.25)
    assert await backend.get_many([key]) == [None]


async def test_a_dead_redis_is_a_fast_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", cool_down_s=0.2)
    caplog.set_level(logging.INFO, logger="flashpro.cache")
    started = time.perf_counter()
    for _ in range(20):
        assert await cache.get_many(["a", "b"]) == [None, None]
        await cache.put("a", b"v", 10)
        assert await cache.try_lock("a", "t", 10)  # no lock service: never make a request wait
    assert time.perf_counter() - started < 0.5
    assert cache.down
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1
    await cache.aclose()


async def test_redis_cache_recovers_without_a_restart(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flashpro.cache")
    cache = RedisCache(redis_server.url, cool_down_s=0.1, timeout_s=0.5)
    key = f"test:{uuid.uuid4().hex}"
    await cache.put(key, b"v", 60)
    redis_server.stop()
    try:
        assert await cache.get_many([key]) == [None]
        assert cache.down
    finally:
        redis_server.start()
    deadline = time.monotonic() + 5
    while cache.down and time.monotonic() < deadline:
        await cache.put(key, b"w", 60)
        await asyncio.sleep(0.05)
    assert await cache.get_many([key]) == [b"w"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1
    await cache.aclose()


# --- the pipeline's view: lookup order, size bound, coalescing ---


def plan(*keys: str, wait_s: float = 2.0, max_entry_bytes: int = 10_000) -> CachePlan:
    return CachePlan(keys, True, True, 60, max_entry_bytes, wait_s)


def entry(text: str = "hi", tier: str = "flash") -> Entry:
    return Entry({"choices": [{"message": {"content": text}}]}, tier, "m", 0.001)


async def test_lookup_prefers_the_first_key_found() -> None:
    cache = ResponseCache(MemoryCache())
    await cache.store(plan("pro"), entry("from pro", "pro"))
    assert await cache.lookup(["flash", "pro"]) == entry("from pro", "pro")
    await cache.store(plan("flash"), entry("from flash"))
    assert await cache.lookup(["flash", "pro"]) == entry("from flash")


async def test_oversize_entries_are_not_stored() -> None:
    cache = ResponseCache(MemoryCache())
    assert not await cache.store(plan("k", max_entry_bytes=50), entry("x" * 100))
    assert await cache.lookup(["k"]) is None


async def test_concurrent_identical_misses_call_once_in_process(backend: Cache) -> None:
    cache = ResponseCache(backend)
    key = f"test:{uuid.uuid4().hex}"
    calls = 0

    async def request() -> Entry:
        nonlocal calls
        async with cache.turn(plan(key)) as ready:
            if ready is not None:
                return ready
            calls += 1
            await asyncio.sleep(0.05)
            await cache.store(plan(key), entry("once"))
            return entry("once")

    results = await asyncio.gather(*(request() for _ in range(10)))
    assert calls == 1 and all(r == entry("once") for r in results)


async def test_followers_of_a_failed_leader_call_themselves() -> None:
    cache = ResponseCache(MemoryCache())
    calls = 0

    async def request(fail: bool) -> str:
        nonlocal calls
        async with cache.turn(plan("k")) as ready:
            if ready is not None:
                return "hit"
            calls += 1
            await asyncio.sleep(0.02)
            if fail:
                raise RuntimeError("upstream failed")
            return "called"

    results = await asyncio.gather(
        request(True), request(False), request(False), return_exceptions=True
    )
    assert isinstance(results[0], RuntimeError)
    assert results[1:] == ["called", "called"] and calls == 3
    assert await cache.backend.try_lock("k", "t", 1)  # the lock was released


async def test_processes_sharing_redis_coalesce(redis_server: RedisServer) -> None:
    one, two = (
        ResponseCache(RedisCache(redis_server.url, timeout_s=0.5)),
        ResponseCache(RedisCache(redis_server.url, timeout_s=0.5)),
    )
    key = f"test:{uuid.uuid4().hex}"
    calls = 0

    async def request(cache: ResponseCache) -> Entry:
        nonlocal calls
        async with cache.turn(plan(key)) as ready:
            if ready is not None:
                return ready
            calls += 1
            await asyncio.sleep(0.1)
            await cache.store(plan(key), entry("shared"))
            return entry("shared")

    results = await asyncio.gather(*(request(c) for c in (one, two) * 4))
    assert calls == 1 and all(r == entry("shared") for r in results)
    await one.aclose()
    await two.aclose()


async def test_a_follower_waits_a_bounded_time_then_calls() -> None:
    cache = ResponseCache(MemoryCache())
    gate = asyncio.Event()

    async def slow_leader() -> None:
        async with cache.turn(plan("k", wait_s=0.1)):
            await gate.wait()

    leader = asyncio.create_task(slow_leader())
    await asyncio.sleep(0)
    started = time.perf_counter()
    async with cache.turn(plan("k", wait_s=0.1)) as ready:
        assert ready is None
    assert 0.08 < time.perf_counter() - started < 0.5
    gate.set()
    await leader
