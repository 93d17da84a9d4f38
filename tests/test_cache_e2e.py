"""The response cache through HTTP: the openai SDK -> flashpro -> the simulated DeepSeek server."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest

from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier
from router.routing.limits import Breaker, Retries
from router.routing.policy import load_policy
from router.routing.routed import Routing
from router.simulator.server import RunningSimulator
from router.state.cache import Cache, MemoryCache, RedisCache, ResponseCache
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import UPSTREAM_KEY, RedisServer, serve_app, settings_for


def make_deps(simulator: RunningSimulator, backend: Cache, **rules: Any) -> Deps:
    policy, version = load_policy(None)
    cache = policy.cache.model_copy(update=rules)
    # one upstream call per request (no retry, fallback or breaker): these tests count calls
    resilience = {"retries": Retries(max_attempts=1), "fallbacks": {}}
    resilience["breaker"] = Breaker(failures=1_000_000)
    policy = policy.model_copy(update={"cache": cache, **resilience})
    classifier = FixedScoreClassifier()  # `auto` -> flash; tiers are pinned by model name
    return Deps(
        routing=Routing.build(policy, version, classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=simulator.url,
        cache=ResponseCache(backend),
    )


@contextmanager
def flashpro_with(simulator: RunningSimulator, backend: Cache, **rules: Any) -> Iterator[str]:
    with serve_app(settings_for(simulator), make_deps(simulator, backend, **rules)) as base:
        yield base


@pytest.fixture(scope="module", params=["memory", "redis"])
def base(
    request: pytest.FixtureRequest,
    simulator: RunningSimulator,
    redis_server: RedisServer,
    upstream_env: None,
) -> Iterator[str]:
    backend: Cache = (
        MemoryCache() if request.param == "memory" else RedisCache(redis_server.url, timeout_s=0.5)
    )
    with flashpro_with(simulator, backend) as url:
        yield url


def client(base: str, key: str = "client-key-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def prompt(text: str = "Explain caching") -> list[dict[str, str]]:
    """A prompt no other test sends (the simulator and Redis are shared)."""
    return [{"role": "user", "content": f"{text} ({uuid.uuid4().hex})"}]


def upstream_calls(sim: RunningSimulator, messages: list[dict[str, str]]) -> int:
    tag = messages[-1]["content"]
    return sum(
        1
        for r in sim.requests()
        if r.path.endswith("/chat/completions") and tag in orjson.dumps(r.body).decode()
    )


def ask(
    base: str,
    messages: list[dict[str, str]],
    *,
    key: str = "client-key-a",
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[httpx.Headers, Any]:
    params = {"model": "auto", "temperature": 0, **params}
    raw = client(base, key).chat.completions.with_raw_response.create(
        messages=messages, extra_headers=headers, **params
    )
    return raw.headers, raw.parse()


def ask_stream(
    base: str, messages: list[dict[str, str]], **params: Any
) -> tuple[httpx.Headers, str, str]:
    params = {"model": "auto", "temperature": 0, **params}
    raw = client(base).chat.completions.with_raw_response.create(
        messages=messages, stream=True, **params
    )
    content, reasoning = [], []
    for chunk in raw.parse():
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
    return raw.headers, "".join(content), "".join(reasoning)


def reasoning_of(completion: Any) -> str:
    return str(getattr(completion.choices[0].message, "reasoning_content", None) or "")


def test_a_hit_skips_the_upstream_and_costs_nothing(base: str, sim: RunningSimulator) -> None:
    messages = prompt()
    first_headers, first = ask(base, messages)
    hit_headers, hit = ask(base, messages)
    assert upstream_calls(sim, messages) == 1
    assert first_headers["x-flashpro-cache"] == "miss"
    assert hit_headers["x-flashpro-cache"] == "hit"
    assert float(hit_headers["x-flashpro-cost-usd"]) == 0
    assert float(hit_headers["x-flashpro-cache-saved-usd"]) == pytest.approx(
        float(first_headers["x-flashpro-cost-usd"])
    )
    assert float(hit_headers["x-flashpro-cache-saved-usd"]) > 0
    assert hit.choices[0].message.content == first.choices[0].message.content
    for name in ("x-flashpro-tier", "x-flashpro-model", "x-flashpro-rule", "x-flashpro-score"):
        assert hit_headers[name] == first_headers[name]


def test_reordered_json_and_ignored_fields_still_hit(base: str, sim: RunningSimulator) -> None:
    messages = prompt()
    ask(base, messages, user="alice")
    text = messages[0]["content"]
    raw = (
        '{\n  "temperature": 0.0,\n  "user": "bob",\n  "messages": [{"content": '
        + orjson.dumps(text).decode()
        + ', "role": "user"}],   "model": "auto", "request_id": "r-1"}'
    )
    response = httpx.post(
        base + "/v1/chat/completions",
        content=raw,
        headers={"authorization": "Bearer client-key-a", "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.headers["x-flashpro-cache"] == "hit"
    assert upstream_calls(sim, messages) == 1


def test_other_tenants_and_other_parameters_miss(base: str, sim: RunningSimulator) -> None:
    messages = prompt()
    ask(base, messages)
    assert ask(base, messages, key="client-key-b")[0]["x-flashpro-cache"] == "miss"
    assert ask(base, messages, temperature=0.5, seed=7)[0]["x-flashpro-cache"] == "miss"
    assert ask(base, messages, temperature=1)[0]["x-flashpro-cache"] == "bypass"
    assert (
        ask(base, messages, model="pro")[0]["x-flashpro-cache"] == "miss"
    )  # Flash never serves Pro
    assert upstream_calls(sim, messages) == 5
    assert ask(base, messages)[0]["x-flashpro-cache"] == "hit"


def test_a_pro_answer_serves_flash_and_says_so(base: str, sim: RunningSimulator) -> None:
    messages = prompt("Prove it")
    _, pro = ask(base, messages, model="pro")
    headers, served = ask(base, messages)  # auto routes to flash
    assert upstream_calls(sim, messages) == 1
    assert headers["x-flashpro-cache"] == "hit"
    assert headers["x-flashpro-tier"] == "pro"
    assert headers["x-flashpro-model"] == "deepseek-v4-pro"
    assert served.choices[0].message.content == pro.choices[0].message.content
    assert reasoning_of(served) == reasoning_of(pro) != ""


def test_stronger_tiers_serve_only_when_the_policy_allows(
    simulator: RunningSimulator, sim: RunningSimulator, upstream_env: None
) -> None:
    with flashpro_with(simulator, MemoryCache(), serve_from_stronger_tiers=False) as url:
        messages = prompt()
        ask(url, messages, model="pro")
        headers, _ = ask(url, messages)
        assert headers["x-flashpro-cache"] == "miss"
        assert headers["x-flashpro-tier"] == "flash"
        assert upstream_calls(sim, messages) == 2


def test_a_stream_is_cached_and_replayed_both_ways(base: str, sim: RunningSimulator) -> None:
    messages = prompt("Think about streams")
    first_headers, content, reasoning = ask_stream(base, messages, model="pro")
    assert first_headers["x-flashpro-cache"] == "miss"
    assert content and reasoning
    again_headers, content_again, reasoning_again = ask_stream(base, messages, model="pro")
    assert again_headers["x-flashpro-cache"] == "hit"
    assert float(again_headers["x-flashpro-cost-usd"]) == 0
    assert (content_again, reasoning_again) == (content, reasoning)
    whole_headers, whole = ask(base, messages, model="pro")
    assert whole_headers["x-flashpro-cache"] == "hit"
    assert whole.choices[0].message.content == content
    assert reasoning_of(whole) == reasoning
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert upstream_calls(sim, messages) == 1


def test_a_whole_answer_is_replayed_as_a_stream_with_usage(
    base: str, sim: RunningSimulator
) -> None:
    messages = prompt()
    _, whole = ask(base, messages, model="pro")
    raw = client(base).chat.completions.with_raw_response.create(
        model="pro",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert raw.headers["x-flashpro-cache"] == "hit"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    kinds = [
        "reasoning" if getattr(d, "reasoning_content", None) else "content" if d.content else ""
        for d in deltas
    ]
    assert kinds.index("reasoning") < kinds.index("content")
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    )
    assert upstream_calls(sim, messages) == 1


@pytest.mark.parametrize("marker", ["[[sim:status=500]]", "[[sim:disconnect_after=3]]"])
def test_failed_answers_are_not_cached(base: str, sim: RunningSimulator, marker: str) -> None:
    messages = prompt(f"Fail {marker}")
    for _ in range(2):
        with pytest.raises(openai.APIError):
            ask(base, messages)
    assert upstream_calls(sim, messages) == 2


def test_truncated_streams_are_not_cached(base: str, sim: RunningSimulator) -> None:
    messages = prompt("Drop me [[sim:disconnect_after=3]]")
    for _ in range(2):
        with pytest.raises(openai.APIError):
            ask_stream(base, messages)
    assert upstream_calls(sim, messages) == 2


def test_a_client_that_leaves_mid_stream_stores_nothing(base: str, sim: RunningSimulator) -> None:
    messages = prompt("Long story [[sim:slow=4]]")
    body = {"model": "pro", "messages": messages, "temperature": 0, "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body) as response:
        assert response.headers["x-flashpro-cache"] == "miss"
        next(response.iter_lines())  # one event, then hang up
    time.sleep(0.8)  # longer than the whole answer takes, had the relay carried on
    again = httpx.post(base + "/v1/chat/completions", json={**body, "stream": False}, timeout=10)
    assert again.headers["x-flashpro-cache"] == "miss"
    assert upstream_calls(sim, messages) == 2


def test_length_cut_answers_are_not_cached(base: str, sim: RunningSimulator) -> None:
    messages = prompt()
    for _ in range(2):
        headers, answer = ask(base, messages, max_tokens=3)
        assert answer.choices[0].finish_reason == "length"
        assert headers["x-flashpro-cache"] == "miss"
    assert upstream_calls(sim, messages) == 2


def test_no_cache_refreshes_and_no_store_neither_reads_nor_writes(
    base: str, sim: RunningSimulator
) -> None:
    messages = prompt()
    _, first = ask(base, messages)
    refreshed_headers, refreshed = ask(base, messages, headers={"Cache-Control": "no-cache"})
    assert refreshed_headers["x-flashpro-cache"] == "miss"
    hit_headers, hit = ask(base, messages)
    assert hit_headers["x-flashpro-cache"] == "hit"  # the refreshed entry serves it
    assert hit.id not in (first.id, refreshed.id)  # as a new completion
    assert (
        ask(base, messages, headers={"Cache-Control": "no-store"})[0]["x-flashpro-cache"]
        == "bypass"
    )
    assert upstream_calls(sim, messages) == 3

    fresh = prompt()
    assert (
        ask(base, fresh, headers={"Cache-Control": "no-store"})[0]["x-flashpro-cache"] == "bypass"
    )
    assert ask(base, fresh)[0]["x-flashpro-cache"] == "miss"
    assert upstream_calls(sim, fresh) == 2


async def concurrently(
    bases: list[str], messages: list[dict[str, str]], count: int
) -> list[httpx.Response]:
    body = {"model": "auto", "messages": messages, "temperature": 0}
    async with httpx.AsyncClient(timeout=10) as http:
        return await asyncio.gather(
            *(
                http.post(bases[i % len(bases)] + "/v1/chat/completions", json=body)
                for i in range(count)
            )
        )


def test_identical_concurrent_requests_call_the_upstream_once(
    base: str, sim: RunningSimulator
) -> None:
    messages = prompt("Same question [[sim:delay_ms=300]]")
    responses = asyncio.run(concurrently([base], messages, 10))
    assert [r.status_code for r in responses] == [200] * 10
    assert upstream_calls(sim, messages) == 1
    statuses = sorted(r.headers["x-flashpro-cache"] for r in responses)
    assert statuses == ["hit"] * 9 + ["miss"]
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1


def test_two_instances_sharing_redis_call_the_upstream_once(
    simulator: RunningSimulator,
    sim: RunningSimulator,
    redis_server: RedisServer,
    upstream_env: None,
) -> None:
    with (
        flashpro_with(simulator, RedisCache(redis_server.url, timeout_s=0.5)) as one,
        flashpro_with(simulator, RedisCache(redis_server.url, timeout_s=0.5)) as two,
    ):
        messages = prompt("Shared question [[sim:delay_ms=300]]")
        responses = asyncio.run(concurrently([one, two], messages, 8))
        assert [r.status_code for r in responses] == [200] * 8
        assert upstream_calls(sim, messages) == 1


def test_oversize_answers_are_not_stored(
    simulator: RunningSimulator, sim: RunningSimulator, upstream_env: None
) -> None:
    with flashpro_with(simulator, MemoryCache(), max_entry_bytes=1024) as url:
        messages = prompt("A long answer please")
        _, first = ask(url, messages, model="pro")
        assert len(first.model_dump_json()) > 1024
        assert ask(url, messages, model="pro")[0]["x-flashpro-cache"] == "miss"
        assert upstream_calls(sim, messages) == 2


def test_a_redis_outage_never_fails_a_request_and_hits_come_back(
    simulator: RunningSimulator,
    sim: RunningSimulator,
    redis_server: RedisServer,
    upstream_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flashpro.cache")
    with flashpro_with(simulator, RedisCache(redis_server.url, timeout_s=0.5)) as url:
        messages = prompt()
        ask(url, messages)
        assert ask(url, messages)[0]["x-flashpro-cache"] == "hit"
        redis_server.stop()
        try:
            for _ in range(5):
                started = time.perf_counter()
                headers, answer = ask(url, messages)
                assert headers["x-flashpro-cache"] == "miss" and answer.choices[0].message.content
                assert time.perf_counter() - started < 1.0
        finally:
            redis_server.start()
        deadline = time.monotonic() + 5
        status = ""
        while status != "hit" and time.monotonic() < deadline:
            status = ask(url, messages)[0]["x-flashpro-cache"]
            time.sleep(0.1)
        assert status == "hit"
    messages_logged = [r.getMessage() for r in caplog.records if r.name == "flashpro.cache"]
    assert sum("unavailable" in m for m in messages_logged) == 1
    assert sum("recovered" in m for m in messages_logged) == 1


def test_readiness_reports_an_unreachable_redis_and_its_return(
    simulator: RunningSimulator, redis_server: RedisServer, upstream_env: None
) -> None:
    with flashpro_with(simulator, RedisCache(redis_server.url, timeout_s=0.5)) as url:
        ready = httpx.get(url + "/readyz").json()
        assert (ready["status"], ready["checks"]["cache"]) == ("ready", "ok")
        redis_server.stop()
        try:
            down = httpx.get(url + "/readyz")
            assert down.status_code == 200  # still serving, without the cache
            assert (down.json()["status"], down.json()["checks"]["cache"]) == (
                "degraded",
                "unreachable",
            )
        finally:
            redis_server.start()
        back = httpx.get(url + "/readyz").json()
        assert back["checks"]["cache"] == "ok"
