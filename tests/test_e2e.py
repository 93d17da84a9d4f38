"""End to end: the official openai SDK -> flashpro -> litellm -> the simulated DeepSeek server."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier
from router.routing.limits import Breaker, Retries
from router.routing.policy import load_policy
from router.routing.routed import Routing
from router.simulator.server import RunningSimulator
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import HOSTILE_FIELDS, UPSTREAM_KEY, WEATHER_TOOL, serve_app, settings_for


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0)


def last_body(sim: RunningSimulator) -> dict[str, Any]:
    chats = [r for r in sim.requests() if r.path.endswith("/chat/completions")]
    assert chats, "the upstream received no chat request"
    body = chats[-1].body
    assert body is not None
    return body


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def fixed_deps(upstream_env: None) -> Iterator[Deps]:
    """Production pieces with a fixed score, so routing by score is predictable."""
    policy, version = load_policy(None)
    timeouts = {
        name: tier.model_copy(update={"timeout_s": 1.0}) for name, tier in policy.tiers.items()
    }
    # one call per request, no fallback, no breaker: these tests check how each failure maps
    no_retries = {"retries": Retries(max_attempts=1), "fallbacks": {}}
    no_breaker = {"breaker": Breaker(failures=1_000_000)}
    policy = policy.model_copy(update={"tiers": timeouts, **no_retries, **no_breaker})
    classifier = FixedScoreClassifier(score=0.99, reasoning=True)
    yield Deps(
        routing=Routing.build(policy, version, classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=None,
    )


@pytest.fixture(scope="module")
def hard(simulator: RunningSimulator, fixed_deps: Deps) -> Iterator[str]:
    """flashpro whose classifier scores every request as hard, reasoning-heavy."""
    deps = Deps(**{**fixed_deps.__dict__, "api_base": simulator.url})
    with serve_app(settings_for(simulator), deps) as base:
        yield base


def test_auto_answers_with_decision_headers(flashpro: str, sim: RunningSimulator) -> None:
    raw = client(flashpro).chat.completions.with_raw_response.create(
        model="auto", messages=user("What is the capital of France?")
    )
    completion = raw.parse()
    tier = raw.headers["x-flashpro-tier"]
    assert tier in ("flash", "pro", "pro-max")
    assert raw.headers["x-flashpro-model"] == completion.model
    assert 0.0 <= float(raw.headers["x-flashpro-score"]) <= 1.0
    assert raw.headers["x-flashpro-rule"]
    assert len(raw.headers["x-flashpro-request-id"]) >= 8
    assert float(raw.headers["x-flashpro-cost-usd"]) > 0
    assert completion.choices[0].message.content
    assert last_body(sim)["model"] == completion.model


@pytest.mark.parametrize(
    ("model", "upstream_model", "thinking", "effort"),
    [
        ("flash", "deepseek-flash", "disabled", None),
        ("pro", "deepseek-v4-pro", "enabled", "high"),
        ("pro-max", "deepseek-v4-pro", "enabled", "max"),
        ("deepseek-flash", "deepseek-flash", "disabled", None),
        ("deepseek-v4-flash", "deepseek-flash", "disabled", None),  # a deprecated id pins flash
        ("deepseek-chat", "deepseek-flash", "disabled", None),
        ("deepseek-v4-pro", "deepseek-v4-pro", "enabled", "high"),
    ],
)
def test_pinned_models_reach_their_tier_with_explicit_thinking(
    flashpro: str,
    sim: RunningSimulator,
    model: str,
    upstream_model: str,
    thinking: str,
    effort: str | None,
) -> None:
    raw = client(flashpro).chat.completions.with_raw_response.create(
        model=model, messages=user("Hi")
    )
    assert raw.headers["x-flashpro-rule"].startswith("pinned:")
    body = last_body(sim)
    assert body["model"] == upstream_model
    assert body["thinking"] == {"type": thinking}
    assert body.get("reasoning_effort") == effort
    message = raw.parse().choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert bool(reasoning) == (thinking == "enabled")


def test_cost_header_follows_policy_prices(flashpro: str) -> None:
    raw = client(flashpro).chat.completions.with_raw_response.create(
        model="pro", messages=user("Price me")
    )
    usage = raw.parse().usage
    assert usage is not None
    hit = getattr(usage, "prompt_cache_hit_tokens", 0) or 0
    prices = load_policy()[0].prices_at("pro", datetime.now(UTC))
    expected = (
        hit * prices.cached_input_usd_per_mtok
        + (usage.prompt_tokens - hit) * prices.input_usd_per_mtok
        + usage.completion_tokens * prices.output_usd_per_mtok
    ) / 1e6
    assert float(raw.headers["x-flashpro-cost-usd"]) == pytest.approx(expected, rel=1e-6)


def test_stream_relays_reasoning_first_then_content_and_usage(
    flashpro: str, sim: RunningSimulator
) -> None:
    with client(flashpro).chat.completions.with_streaming_response.create(
        model="pro",
        messages=user("Stream please"),
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-flashpro-tier"] == "pro"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    kinds = []
    for chunk in chunks:
        for choice in chunk.choices:
            if getattr(choice.delta, "reasoning_content", None):
                kinds.append("reasoning")
            if choice.delta.content:
                kinds.append("content")
    assert kinds and kinds[0] == "reasoning" and "content" in kinds
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert last_body(sim)["stream"] is True


def test_stream_without_include_usage_sends_no_usage(flashpro: str) -> None:
    stream = client(flashpro).chat.completions.create(
        model="flash", messages=user("No usage"), stream=True
    )
    chunks = list(stream)
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_async_client_streams_and_completes(flashpro: str) -> None:
    async def run() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=flashpro + "/v1", api_key="k", max_retries=0)
        done = await aclient.chat.completions.create(model="flash", messages=user("async"))
        parts = []
        stream = await aclient.chat.completions.create(
            model="flash", messages=user("async"), stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        await aclient.close()
        return done.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(run())
    assert whole and whole == streamed


def test_parameters_pass_through_and_transport_fields_do_not(
    flashpro: str, sim: RunningSimulator
) -> None:
    body = {
        "model": "flash",
        "messages": user("params"),
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 4000,
        "stop": ["END"],
        "seed": 7,
        "user": "u-1",
        "response_format": {"type": "json_object"},
        **HOSTILE_FIELDS,
    }
    response = httpx.post(flashpro + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    received = sim.requests()[-1]
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    sent = received.body
    assert sent is not None
    # `user` reaches litellm too, which keeps it as call metadata: DeepSeek's API has no such field.
    for name in ("temperature", "top_p", "max_tokens", "stop", "seed", "response_format"):
        assert sent[name] == body[name], name
    for name in HOSTILE_FIELDS:
        assert name not in sent, name
    assert "x-evil" not in received.headers
    json.loads(response.json()["choices"][0]["message"]["content"])  # json_object honoured


def test_tool_call_round_trip_restores_reasoning(flashpro: str, sim: RunningSimulator) -> None:
    api = client(flashpro)
    first = api.chat.completions.create(
        model="pro", messages=user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    # The client echoes the turn without reasoning_content, as many OpenAI clients do.
    history = [
        *user("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = api.chat.completions.create(model="pro", messages=history, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content
    sent = last_body(sim)["messages"][1]
    assert sent["reasoning_content"] == first.choices[0].message.reasoning_content  # type: ignore[attr-defined]


def test_tool_call_streams(flashpro: str) -> None:
    stream = client(flashpro).chat.completions.create(
        model="flash", messages=user("Weather in Rome?"), tools=[WEATHER_TOOL], stream=True
    )
    names = [
        tc.function.name
        for chunk in stream
        for choice in chunk.choices
        for tc in choice.delta.tool_calls or ()
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]


def test_multipart_and_system_messages(flashpro: str, sim: RunningSimulator) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Part one."},
                {"type": "text", "text": "Part two."},
            ],
        },
    ]
    done = client(flashpro).chat.completions.create(model="flash", messages=messages)  # type: ignore[arg-type]
    assert done.choices[0].message.content
    sent = last_body(sim)["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert "Part two." in json.dumps(sent[1]["content"])


def test_hard_requests_route_up_and_rules_bound_them(hard: str, sim: RunningSimulator) -> None:
    api = client(hard)
    raw = api.chat.completions.with_raw_response.create(model="auto", messages=user("prove it"))
    assert raw.headers["x-flashpro-tier"] == "pro-max"
    assert last_body(sim)["reasoning_effort"] == "max"
    raw = api.chat.completions.with_raw_response.create(
        model="auto", messages=user("call a tool"), tools=[WEATHER_TOOL]
    )
    assert raw.headers["x-flashpro-tier"] == "pro"
    assert raw.headers["x-flashpro-rule"] == "agents-stay-responsive"


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("[[sim:status=429]][[sim:retry_after=3]]", 429, "upstream_rate_limited"),
        ("[[sim:status=500]]", 502, "upstream_error"),
        ("[[sim:status=503]]", 503, "upstream_overloaded"),
        ("[[sim:status=402]]", 503, "upstream_insufficient_balance"),
        ("[[sim:delay_ms=3000]]", 504, "upstream_timeout"),
    ],
)
def test_upstream_errors_are_mapped(hard: str, marker: str, status: int, code: str) -> None:
    for stream in (False, True):
        response = httpx.post(
            hard + "/v1/chat/completions",
            json={"model": "flash", "messages": user(f"fail {marker}"), "stream": stream},
            timeout=10,
        )
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert set(error) == {"message", "type", "param", "code"}
        assert UPSTREAM_KEY not in response.text
        if status == 429:
            assert response.headers["retry-after"] == "3"
    assert httpx.get(hard + "/healthz").status_code == 200


def test_context_too_long_is_400(flashpro: str) -> None:
    huge = "word " * 1_100_000
    response = httpx.post(
        flashpro + "/v1/chat/completions",
        json={"model": "flash", "messages": user(huge)},
        timeout=30,
    )
    # over the in-test body limit first; the real context check is covered below
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_upstream_context_error_maps_to_400(hard: str) -> None:
    huge = "word " * 1_100_000
    response = httpx.post(
        hard + "/v1/chat/completions", json={"model": "flash", "messages": user(huge)}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_mid_stream_failure_ends_with_error_event_and_done(hard: str) -> None:
    with httpx.stream(
        "POST",
        hard + "/v1/chat/completions",
        json={"model": "pro", "messages": user("drop [[sim:disconnect_after=3]]"), "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error["error"]["type"] == "upstream_error"
    assert len(events) >= 5  # the chunks before the drop were relayed


BAD_BODIES: list[tuple[bytes | dict[str, Any] | list[Any], int, str]] = [
    (b"{not json", 400, "invalid_request"),
    ([1, 2], 400, "invalid_request"),
    ({"model": "auto"}, 400, "invalid_request"),
    ({"model": "auto", "messages": []}, 400, "invalid_request"),
    ({"model": "auto", "messages": "hi"}, 400, "invalid_request"),
    ({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request"),
    ({"model": "auto", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_request"),
    ({"model": 3, "messages": user("x")}, 400, "invalid_request"),
    ({"model": "auto", "messages": user("x"), "temperature": "hot"}, 400, "invalid_request"),
    ({"model": "auto", "messages": user("x"), "max_tokens": -1}, 400, "invalid_request"),
    ({"model": "gpt-4o", "messages": user("x")}, 404, "model_not_found"),
    ({"model": "auto", "messages": user("x" * 300_000)}, 413, "request_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_input_gets_an_openai_error(
    flashpro: str, body: bytes | dict[str, Any] | list[Any], status: int, code: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        flashpro + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert httpx.get(flashpro + "/healthz").status_code == 200


def test_sdk_sees_unknown_model_as_not_found(flashpro: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(flashpro).chat.completions.create(model="gpt-4o", messages=user("x"))
    assert info.value.code == "model_not_found"


def test_models_route_and_health_endpoints(flashpro: str) -> None:
    models = client(flashpro).models.list()
    ids = {model.id for model in models.data}
    assert {"auto", "auto-economy", "auto-quality", "flash", "pro", "pro-max"} <= ids

    route = httpx.post(
        flashpro + "/v1/route",
        json={"model": "auto", "messages": user("Integrate x^2 from 0 to 3")},
    )
    assert route.status_code == 200
    decision = route.json()
    assert decision["tier"] == route.headers["x-flashpro-tier"]
    assert decision["rule"] and decision["reason"] and 0 <= decision["score"] <= 1
    assert {"difficulty", "gain", "reasons"} <= set(decision)

    assert httpx.get(flashpro + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(flashpro + "/readyz")
    assert ready.status_code == 200 and len(ready.json()["policy_version"]) == 12
    missing = httpx.get(flashpro + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"]


def test_route_does_not_call_the_upstream(flashpro: str, sim: RunningSimulator) -> None:
    httpx.post(flashpro + "/v1/route", json={"model": "auto", "messages": user("just route")})
    assert not sim.requests()
