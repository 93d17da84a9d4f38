"""flashpro follows DeepSeek's request rules end to end, against the strict simulated DeepSeek,
through the official OpenAI SDK, on both transports: roles, output caps, JSON output, images,
user_id, reasoning shared through Redis, balance errors, concurrency caps, and answers kept per
upstream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from router.app import build_deps
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier
from router.routing.policy import Policy, load_policy, parse_policy
from router.routing.routed import Routing
from router.simulator.server import (
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)
from router.state.controls import open_controls
from router.state.near import open_cache
from router.state.reasoning import ReasoningMemory, open_reasoning
from router.upstream.shaping import JSON_LINE, SCHEMA_LINE
from router.upstream.transport import open_upstream
from tests.conftest import UPSTREAM_KEY, WEATHER_TOOL, RedisServer, serve_app, settings_for

TRANSPORTS = ("direct", "litellm")
CLIENT_KEY = "sk-client-of-flashpro-1234"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
DEFAULT_YAML = (Path(__file__).resolve().parents[1] / "policies" / "default.yaml").read_text()


def sdk(base: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def chats(sim: RunningSimulator) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests() if r.path.endswith("/chat/completions") and r.body]


def say(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def deps_of(
    sim: RunningSimulator,
    policy: Policy | None = None,
    *,
    transport: str = "direct",
    score: float = 0.99,
    redis_url: str | None = None,
) -> Deps:
    """Production pieces (the chosen transport, Redis if given) with a fixed difficulty score."""
    if policy is None:
        policy = load_policy(None)[0]
    classifier = FixedScoreClassifier(score=score, reasoning=True)
    routing = Routing.build(policy, "test", classifier, os.environ)
    return Deps(
        routing=routing,
        upstream=open_upstream(transport, (UPSTREAM_KEY,)),  # type: ignore[arg-type]
        memory=open_reasoning(redis_url),
        api_base=sim.url,
        cache=open_cache(redis_url, policy.cache),
        controls=open_controls(redis_url, os.environ, routing.upstreams(sim.url)),
    )


@pytest.fixture(scope="module", params=TRANSPORTS)
def proxy(
    request: pytest.FixtureRequest, simulator: RunningSimulator, upstream_env: None
) -> Iterator[str]:
    """flashpro on one transport, scoring every request as hard (auto -> pro-max)."""
    deps = deps_of(simulator, transport=request.param)
    with serve_app(settings_for(simulator), deps) as base:
        yield base


def test_developer_turns_reach_deepseek_as_system(proxy: str, sim: RunningSimulator) -> None:
    messages: Any = [{"role": "developer", "content": "Be terse."}, *say("Hello there.")]
    answer = sdk(proxy).chat.completions.create(model="flash", messages=messages)
    assert answer.choices[0].message.content
    assert [m["role"] for m in chats(sim)[-1]["messages"]] == ["system", "user"]


def test_max_completion_tokens_caps_the_answer_as_max_tokens(
    proxy: str, sim: RunningSimulator
) -> None:
    answer = sdk(proxy).chat.completions.create(
        model="flash", messages=say("Tell me a long story."), max_completion_tokens=6
    )
    body = chats(sim)[-1]
    assert body["max_tokens"] == 6 and "max_completion_tokens" not in body
    assert answer.usage is not None and answer.usage.completion_tokens <= 6
    assert answer.choices[0].finish_reason == "length"


def test_json_schema_is_answered_in_json_mode(proxy: str, sim: RunningSimulator) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    answer = sdk(proxy).chat.completions.create(
        model="flash",
        messages=say("Name a colour."),
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert isinstance(orjson.loads(answer.choices[0].message.content or ""), dict)
    body = chats(sim)[-1]
    assert body["response_format"] == {"type": "json_object"}
    line = body["messages"][0]["content"]
    assert orjson.loads(line.removeprefix(SCHEMA_LINE)) == schema


def test_json_object_without_the_word_json_is_answered(proxy: str, sim: RunningSimulator) -> None:
    answer = sdk(proxy).chat.completions.create(
        model="flash", messages=say("Name a colour."), response_format={"type": "json_object"}
    )
    assert isinstance(orjson.loads(answer.choices[0].message.content or ""), dict)
    assert chats(sim)[-1]["messages"][0] == {"role": "system", "content": JSON_LINE}


def test_images_route_to_a_tier_that_reads_them(proxy: str, sim: RunningSimulator) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.headers["x-flashpro-tier"] == "flash"  # the score alone picks pro-max
    assert raw.headers["x-flashpro-rule"] == "vision"
    assert chats(sim)[-1]["messages"][0]["content"][1]["type"] == "image_url"


def test_images_pinned_to_a_tier_without_vision_are_a_clear_400(
    proxy: str, sim: RunningSimulator
) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).chat.completions.create(model="pro", messages=messages)
    error: Any = caught.value.body
    assert error["code"] == "images_not_supported"
    assert "does not accept images" in error["message"]
    assert chats(sim) == []  # nothing was sent, nothing dropped


def test_user_id_is_the_callers_hash_never_the_key(proxy: str, sim: RunningSimulator) -> None:
    sdk(proxy).chat.completions.create(model="flash", messages=say("Who am I?"), user="alice")
    body = chats(sim)[-1]
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:32]
    assert body["user_id"] == f"flashpro-key-{digest}"
    assert CLIENT_KEY not in orjson.dumps(body).decode()
    assert "user" not in body


def test_reasoning_of_a_tool_call_reaches_another_process_through_redis(
    simulator: RunningSimulator,
    sim: RunningSimulator,
    redis_server: RedisServer,
    upstream_env: None,
) -> None:
    """Two flashpro processes on one Redis: the turn after a tool call reaches the second one,
    whose client dropped the reasoning; DeepSeek (thinking on) needs it back."""
    first = deps_of(simulator, redis_url=redis_server.url)
    second = deps_of(simulator, redis_url=redis_server.url)
    settings = settings_for(simulator)
    with serve_app(settings, first) as a, serve_app(settings, second) as b:
        asked = say("Weather in Paris?")
        turn = sdk(a).chat.completions.create(model="pro", messages=asked, tools=[WEATHER_TOOL])
        call = turn.choices[0].message.tool_calls
        assert call and getattr(turn.choices[0].message, "reasoning_content", None)
        echoed: Any = [
            *asked,
            {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in call]},
            {"role": "tool", "tool_call_id": call[0].id, "content": '{"temp_c": 21}'},
        ]
        after = sdk(b).chat.completions.create(model="pro", messages=echoed, tools=[WEATHER_TOOL])
        assert after.choices[0].message.content
        sent = chats(sim)[-1]["messages"][1]
        expected = getattr(turn.choices[0].message, "reasoning_content", None)
        assert sent["reasoning_content"] == expected != " "
        # a caller with another key cannot have that reasoning put into its own request
        sdk(b, key="sk-someone-else-999").chat.completions.create(
            model="pro", messages=echoed, tools=[WEATHER_TOOL]
        )
        assert chats(sim)[-1]["messages"][1]["reasoning_content"] == " "


def test_without_shared_memory_the_next_turn_gets_a_placeholder(
    simulator: RunningSimulator, sim: RunningSimulator, upstream_env: None
) -> None:
    first, second = deps_of(simulator), deps_of(simulator)
    assert isinstance(second.memory, ReasoningMemory)
    settings = settings_for(simulator)
    with serve_app(settings, first) as a, serve_app(settings, second) as b:
        asked = say("Weather in Rome?")
        turn = sdk(a).chat.completions.create(model="pro", messages=asked, tools=[WEATHER_TOOL])
        call = turn.choices[0].message.tool_calls
        assert call
        echoed: Any = [
            *asked,
            {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in call]},
            {"role": "tool", "tool_call_id": call[0].id, "content": '{"temp_c": 25}'},
        ]
        sdk(b).chat.completions.create(model="pro", messages=echoed, tools=[WEATHER_TOOL])
        assert chats(sim)[-1]["messages"][1]["reasoning_content"] == " "


def policy_with(extra: str) -> Policy:
    return parse_policy(DEFAULT_YAML + "\n" + extra)


def metric(base: str, name: str) -> str:
    lines = httpx.get(base + "/metrics").text.split("\n")
    return "\n".join(line for line in lines if line.startswith(name))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True])
def test_insufficient_balance_is_a_503_naming_the_account_without_retries(
    simulator: RunningSimulator,
    sim: RunningSimulator,
    upstream_env: None,
    transport: str,
    stream: bool,
) -> None:
    policy = policy_with("retries: {max_attempts: 3, backoff_initial_ms: 1}")  # fallbacks too
    deps = deps_of(simulator, policy, transport=transport)
    with serve_app(settings_for(simulator), deps) as base:
        response = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "pro", "messages": say("hi [[sim:status=402]]"), "stream": stream},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            timeout=10,
        )
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_insufficient_balance"
        assert "DEEPSEEK_API_KEY at 127.0.0.1" in error["message"]
        assert "request itself is fine" in error["message"]
        assert len(chats(sim)) == 1  # no retry, no fallback
        counted = metric(base, "flashpro_upstream_account_errors_total")
        assert 'reason="insufficient_balance",tier="pro"} 1.0' in counted


def test_a_tier_at_max_concurrency_sheds_with_503_and_retry_after(
    simulator: RunningSimulator, sim: RunningSimulator, upstream_env: None
) -> None:
    policy = policy_with("fallbacks: {}")
    busy = policy.tiers["flash"].model_copy(update={"max_concurrency": 1, "queue_ms": 50})
    policy = policy.model_copy(update={"tiers": {**policy.tiers, "flash": busy}})
    with serve_app(settings_for(simulator), deps_of(simulator, policy)) as base:
        responses: list[httpx.Response] = []

        def ask(text: str) -> None:
            responses.append(
                httpx.post(
                    base + "/v1/chat/completions",
                    json={"model": "flash", "messages": say(text)},
                    timeout=10,
                )
            )

        slow = threading.Thread(target=ask, args=("slow [[sim:delay_ms=1500]]",))
        slow.start()
        for _ in range(100):  # until the slow call holds the only slot
            if 'flashpro_upstream_in_flight{model="deepseek-flash"} 1.0' in metric(
                base, "flashpro_upstream_in_flight"
            ):
                break
            threading.Event().wait(0.02)
        ask("fast")
        slow.join()
        shed = responses[0]
        assert shed.status_code == 503, shed.text
        assert shed.json()["error"]["code"] == "upstream_saturated"
        assert shed.headers["retry-after"] == "1"
        assert responses[1].status_code == 200
        assert 'tier="flash"} 1.0' in metric(base, "flashpro_upstream_saturated_total")
        assert len(chats(sim)) == 1  # the shed request never reached DeepSeek


def spent_today(redis_url: str, namespace: str) -> float:
    async def read() -> float:
        controls = open_controls(redis_url, {}, namespace)
        try:
            [(day, _)] = await controls.ledger.spent(["total"], controls.now())
        finally:
            await controls.aclose()
        return day

    return asyncio.run(read())


def test_answers_and_spend_are_kept_per_upstream(
    simulator: RunningSimulator, redis_server: RedisServer, upstream_env: None
) -> None:
    """A simulated and a "real" flashpro (another upstream) on one Redis never serve each
    other's cached answers or charge each other's budgets."""
    policy = policy_with("budgets: {total: {usd_per_day: 100}}")
    with start_in_thread(SimulatorConfig(profiles=default_profiles(), speed=0)) as other:
        ours = deps_of(simulator, policy, redis_url=redis_server.url)
        theirs = deps_of(other, policy, redis_url=redis_server.url)
        ours_ns, theirs_ns = ours.live.upstreams(simulator.url), theirs.live.upstreams(other.url)
        assert ours_ns != theirs_ns
        before = spent_today(redis_server.url, ours_ns)
        body = {"model": "flash", "messages": say("Cache me per upstream."), "temperature": 0}
        auth = {"authorization": f"Bearer {CLIENT_KEY}"}
        url = "/v1/chat/completions"
        with (
            serve_app(settings_for(simulator), ours) as a,
            serve_app(settings_for(other), theirs) as b,
        ):
            first = httpx.post(a + url, json=body, headers=auth)
            assert first.headers["x-flashpro-cache"] == "miss"
            assert httpx.post(a + url, json=body, headers=auth).headers["x-flashpro-cache"] == "hit"
            answer = httpx.post(b + url, json=body, headers=auth)
            assert answer.headers["x-flashpro-cache"] == "miss"
            assert len(chats(other)) == 1
        ours_cost = float(first.headers["x-flashpro-cost-usd"])
        theirs_cost = float(answer.headers["x-flashpro-cost-usd"])
        assert ours_cost > 0 and theirs_cost > 0
        assert spent_today(redis_server.url, ours_ns) - before == pytest.approx(ours_cost)
        assert spent_today(redis_server.url, theirs_ns) == pytest.approx(theirs_cost)


def test_production_deps_follow_the_same_rules(flashpro: str, sim: RunningSimulator) -> None:
    messages: Any = [{"role": "developer", "content": "Answer in one word."}, *say("Colour?")]
    sdk(flashpro).chat.completions.create(
        model="deepseek-chat", messages=messages, max_completion_tokens=20
    )
    body = chats(sim)[-1]
    assert body["model"] == "deepseek-flash"  # a deprecated id pins the flash tier
    assert body["messages"][0]["role"] == "system" and body["max_tokens"] == 20


def test_build_deps_shares_reasoning_through_redis_when_configured(
    simulator: RunningSimulator, redis_server: RedisServer, upstream_env: None
) -> None:
    deps = build_deps(settings_for(simulator, redis_url=redis_server.url))
    assert not isinstance(deps.memory, ReasoningMemory)
