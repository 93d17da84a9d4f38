"""Per-key request and token rates, request caps, and the body limit: 429 with Retry-After,
400 and 413, each with a clear message; counters shared through Redis and Redis-outage proof."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router.app import build_deps
from router.errors import InvalidRequest, RateLimited
from router.routing.callers import key_digest
from router.routing.limits import Group, RequestLimits
from router.routing.policy import load_policy
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.state import store
from router.state.counter import MemoryCounter, RedisCounter
from router.state.ratelimit import RateLimiter, check_shape, limits_for
from tests.conftest import RedisServer, serve_app, settings_for
from tests.fault_policy import CLIENT_KEY, OTHER_KEY, write_policy

POLICY, _ = load_policy(None)


def request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 4}, "messages"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_completion_tokens": 101}, "max_completion_tokens"),
        ({"n": 3}, "n"),
    ],
)
def test_requests_over_a_cap_are_400(fields: dict[str, Any], param: str) -> None:
    limits = RequestLimits(max_messages=3, max_tokens_cap=100, max_n=2)
    with pytest.raises(InvalidRequest) as caught:
        check_shape(limits, request(**fields))
    assert caught.value.param == param
    check_shape(limits, request(max_tokens=100, n=2))
    check_shape(None, request(**fields))


def test_group_limits_override_the_policys_field_by_field() -> None:
    groups = {"bots": Group(limits=RequestLimits(requests_per_minute=5))}
    policy = POLICY.model_copy(
        update={"limits": RequestLimits(requests_per_minute=100, max_n=1), "groups": groups}
    )
    assert limits_for(policy, "bots") == RequestLimits(requests_per_minute=5, max_n=1)
    assert limits_for(policy, None) == policy.limits
    assert limits_for(POLICY, "bots") is None


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refuse_with_retry_after_until_the_minute_ends() -> None:
    clock = Clock(60 * 1000 + 45)  # 15 s before the minute ends
    limiter = RateLimiter(MemoryCounter(clock), clock)
    limits = RequestLimits(requests_per_minute=2)

    async def run() -> None:
        await limiter.admit(limits, "k1")
        await limiter.admit(limits, "k1")
        with pytest.raises(RateLimited) as caught:
            await limiter.admit(limits, "k1")
        assert caught.value.headers == {"Retry-After": "15"}
        assert "2 requests per minute" in caught.value.message
        await limiter.admit(limits, "k2")  # another key has its own count
        clock.now += 15
        await limiter.admit(limits, "k1")  # a new minute

    asyncio.run(run())


def test_tokens_per_minute_count_answered_tokens() -> None:
    clock = Clock(120.0)
    limiter = RateLimiter(MemoryCounter(clock), clock)
    limits = RequestLimits(tokens_per_minute=1000)

    async def run() -> None:
        await limiter.admit(limits, "k")
        await limiter.used(limits, "k", 999)
        await limiter.admit(limits, "k")
        await limiter.used(limits, "k", 1)
        with pytest.raises(RateLimited, match="1000 tokens per minute"):
            await limiter.admit(limits, "k")

    asyncio.run(run())


def test_redis_counters_are_shared_and_survive_an_outage(redis_server: RedisServer) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    redis.Redis.from_url(url).flushdb()
    limits = RequestLimits(requests_per_minute=3)

    async def run(stopped: bool) -> None:
        one = RateLimiter(RedisCounter(store.Store(store.connect(url))))
        two = RateLimiter(RedisCounter(store.Store(store.connect(url))))
        try:
            if stopped:
                for _ in range(5):  # Redis down: counted in memory, never an error
                    await one.admit(RequestLimits(requests_per_minute=100), "k")
                return
            await one.admit(limits, "k")
            await two.admit(limits, "k")
            await one.admit(limits, "k")
            with pytest.raises(RateLimited):
                await two.admit(limits, "k")  # the fourth request across both processes
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(run(stopped=False))
    redis_server.stop()
    try:
        asyncio.run(run(stopped=True))
    finally:
        redis_server.start()


@pytest.fixture
def limited(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path, redis_server: RedisServer
) -> Iterator[str]:
    redis.Redis.from_url(redis_server.url).delete(*_rate_keys(redis_server.url))
    policy = write_policy(
        tmp_path,
        limits={"requests_per_minute": 3, "max_messages": 4, "max_tokens_cap": 500, "max_n": 1},
        groups={"vip": {"limits": {"requests_per_minute": 50}}},
        keys={key_digest(OTHER_KEY): "vip"},
    )
    settings = settings_for(
        simulator, policy=policy, redis_url=redis_server.url, max_body_bytes=4096
    )
    deps = build_deps(settings)
    # a fixed moment 30 s into a minute, so the test never straddles two windows
    frozen = RateLimiter(deps.rates.counter, clock=lambda: 60 * 29_000_000 + 30.0)
    with serve_app(settings, replace(deps, rates=frozen, holder=deps.holder)) as base:
        yield base


def _rate_keys(url: str) -> list[bytes]:
    keys: list[bytes] = list(redis.Redis.from_url(url).scan_iter("flashpro:v1:rate:*"))
    return keys or [b"flashpro:v1:rate:none"]


def post(base: str, key: str, **fields: Any) -> httpx.Response:
    body = {"model": "flash", "messages": [{"role": "user", "content": "hi"}], **fields}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_each_limit_answers_with_its_status_and_a_clear_message(limited: str) -> None:
    assert post(limited, CLIENT_KEY).status_code == 200
    too_many = post(limited, CLIENT_KEY, messages=[{"role": "user", "content": "x"}] * 5)
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "messages"
    capped = post(limited, CLIENT_KEY, max_tokens=501)
    assert capped.status_code == 400 and "at most 500" in capped.json()["error"]["message"]
    assert post(limited, CLIENT_KEY, n=2).status_code == 400
    huge = post(limited, CLIENT_KEY, messages=[{"role": "user", "content": "x" * 5000}])
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    # refused requests are not counted: two more are let in, then the key's 3 are spent
    assert post(limited, CLIENT_KEY).status_code == 200
    assert post(limited, CLIENT_KEY).status_code == 200
    refused = post(limited, CLIENT_KEY)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"] == "30"
    assert "3 requests per minute" in refused.json()["error"]["message"]
    # another key in a group with its own limit is unaffected
    assert post(limited, OTHER_KEY).status_code == 200
