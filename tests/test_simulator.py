"""The simulated DeepSeek server, over real HTTP on loopback: raw httpx and through litellm."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # the cost-map switch above must come first

from router.simulator.command import add_simulator_arguments, simulator_config
from router.simulator.server import (
    ModelProfile,
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)

KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
PRO = "deepseek-v4-pro"
FLASH = "deepseek-v4-flash"
TINY = "deepseek-tiny"  # a 64-token context window, to provoke context-length errors cheaply
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    profiles = default_profiles() | {
        TINY: ModelProfile(ttft_ms=1, tokens_per_s=1000, max_context_tokens=64)
    }
    with start_in_thread(SimulatorConfig(profiles=profiles, speed=0, api_key=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def paced() -> Iterator[httpx.Client]:
    """A client of a simulator with real latency at 1/100 speed: 1 s TTFT -> 10 ms, 100 tok/s
    -> 10,000 tok/s."""
    profiles = {PRO: ModelProfile(ttft_ms=1000, tokens_per_s=100)}
    with (
        start_in_thread(SimulatorConfig(profiles=profiles, speed=0.01)) as running,
        httpx.Client(base_url=running.url, timeout=10) as http,
    ):
        yield http


@pytest.fixture(scope="module")
def client(sim: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as http:
        yield http


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(client: httpx.Client, text: str, **params: Any) -> httpx.Response:
    body = {"model": PRO, "messages": user(text), **params}
    return client.post("/chat/completions", json=body)


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, asserting it ends with [DONE]."""
    lines = [line for line in response.text.split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def acomplete(sim: RunningSimulator, text: str, model: str = PRO, **params: Any) -> Any:
    messages = params.pop("messages", None) or user(text)
    return await litellm.acompletion(
        model=f"deepseek/{model}",
        api_base=sim.url,
        api_key=params.pop("api_key", KEY),
        messages=messages,
        **params,
    )


async def test_litellm_posts_to_chat_completions_at_the_api_base(sim: RunningSimulator) -> None:
    sim.clear()
    await acomplete(sim, "which path?")
    [request] = sim.requests()
    assert (request.method, request.path) == ("POST", "/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body is not None
    assert request.body["model"] == PRO
    assert "thinking" not in request.body  # litellm sends nothing: DeepSeek's default applies


def test_every_documented_route_answers(client: httpx.Client) -> None:
    for path in ("/chat/completions", "/v1/chat/completions", "/beta/chat/completions"):
        response = client.post(path, json={"model": FLASH, "messages": user("route")})
        assert response.status_code == 200, path
    for path in ("/models", "/v1/models"):
        ids = [m["id"] for m in client.get(path).json()["data"]]
        assert {PRO, FLASH, "deepseek-flash"} <= set(ids)
    assert client.get("/nowhere").status_code == 404
    assert client.get("/chat/completions").status_code == 405


async def test_litellm_response_carries_reasoning_and_deepseek_usage(sim: RunningSimulator) -> None:
    response = await acomplete(sim, "Explain prefix caching.")
    message = response.choices[0].message
    assert response.model == PRO
    assert message.content and message.reasoning_content
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.prompt_cache_hit_tokens + usage.prompt_cache_miss_tokens == usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_cache_hit_tokens


async def test_litellm_stream_sends_reasoning_then_content_then_usage(
    sim: RunningSimulator,
) -> None:
    await acomplete(sim, "Stream it.")  # warms the prefix cache for the same prompt
    stream = await acomplete(sim, "Stream it.", stream=True, stream_options={"include_usage": True})
    kinds, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            # litellm's Delta drops the attribute entirely when a chunk has no reasoning.
            reasoning = getattr(delta, "reasoning_content", None)
            kinds += ["reasoning"] * bool(reasoning) + ["content"] * bool(delta.content)
            finish = chunk.choices[0].finish_reason or finish
        usage = getattr(chunk, "usage", None) or usage
    assert kinds.count("reasoning") > 1 and kinds.count("content") > 1
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")  # all reasoning first
    assert finish == "stop"
    # litellm keeps only cached_tokens from a streamed usage chunk: prompt_cache_hit_tokens and
    # prompt_cache_miss_tokens are dropped (they survive in non-streamed responses).
    assert usage is not None and usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens
    assert usage.completion_tokens_details.reasoning_tokens > 0


def test_raw_stream_ends_with_usage_chunk_then_done(client: httpx.Client) -> None:
    response = chat(client, "raw stream", stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == PRO for e in events)
    without_usage = sse_events(chat(client, "raw stream", stream=True))
    assert all(e["choices"] for e in without_usage)


async def test_thinking_disabled_gives_no_reasoning(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    response = await acomplete(sim, "No thinking.", thinking={"type": "disabled"})
    assert response.choices[0].message.content
    assert not getattr(response.choices[0].message, "reasoning_content", None)
    assert sim.requests()[-1].body["thinking"] == {"type": "disabled"}  # type: ignore[index]
    events = sse_events(chat(client, "No thinking.", stream=True, thinking={"type": "disabled"}))
    assert not any("reasoning_content" in e["choices"][0]["delta"] for e in events)


def test_max_effort_reasons_longer_and_keeps_the_answer(client: httpx.Client) -> None:
    by_effort = {
        effort: chat(client, "Same question.", reasoning_effort=effort).json()
        for effort in ("low", "high", "max")
    }
    reasoning = {
        e: r["usage"]["completion_tokens_details"]["reasoning_tokens"] for e, r in by_effort.items()
    }
    assert reasoning["low"] < reasoning["high"] < reasoning["max"]
    answers = {r["choices"][0]["message"]["content"] for r in by_effort.values()}
    assert len(answers) == 1
    assert chat(client, "x", reasoning_effort="extreme").status_code == 400


def test_answers_are_deterministic_per_request(client: httpx.Client) -> None:
    def answer(**params: Any) -> str:
        return str(
            chat(client, "Deterministic?", **params).json()["choices"][0]["message"]["content"]
        )

    assert answer() == answer()
    assert answer(seed=1) != answer(seed=2)
    assert answer(temperature=0.1) != answer(temperature=0.9)


def test_max_tokens_truncates_with_finish_reason_length(client: httpx.Client) -> None:
    body = chat(client, "Long answer please.", max_tokens=20).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 20
    unbounded = chat(client, "Long answer please.", thinking={"type": "disabled"}).json()
    assert unbounded["choices"][0]["finish_reason"] == "stop"
    assert 12 <= unbounded["usage"]["completion_tokens"] <= 400 + 20  # whole last sentence


def test_json_mode_answers_a_json_object(client: httpx.Client) -> None:
    body = chat(client, "Reply in json", response_format={"type": "json_object"}).json()
    assert isinstance(orjson.loads(body["choices"][0]["message"]["content"]), dict)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert chat(client, "x", response_format=schema).status_code == 400


def test_n_returns_distinct_choices_in_json_and_stream(client: httpx.Client) -> None:
    body = chat(client, "Three ways", n=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 3
    events = sse_events(chat(client, "Three ways", n=3, stream=True))
    finished = [e["choices"][0]["index"] for e in events if e["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1, 2]


async def test_tool_call_round_trip_through_litellm(sim: RunningSimulator) -> None:
    messages = user("Weather in Paris?")
    first = await acomplete(sim, "", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = orjson.loads(call.function.arguments)
    assert set(arguments) == {"city", "days", "unit"} and arguments["unit"] == "celsius"
    assert isinstance(arguments["days"], int)
    assistant = {
        "role": "assistant",
        "content": choice.message.content,
        "tool_calls": [call.model_dump()],
        "reasoning_content": choice.message.reasoning_content,
    }
    tool_result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}
    second = await acomplete(
        sim, "", messages=[*messages, assistant, tool_result], tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_tool_choice_picks_or_suppresses_the_call(client: httpx.Client) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    forced = {"type": "function", "function": {"name": "get_time"}}
    body = chat(client, "Time?", tools=tools, tool_choice=forced).json()
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    body = chat(client, "Time?", tools=tools, tool_choice="none").json()
    assert body["choices"][0]["finish_reason"] == "stop"
    missing = {"type": "function", "function": {"name": "nope"}}
    assert chat(client, "Time?", tools=tools, tool_choice=missing).status_code == 400


def test_streamed_tool_call_arrives_as_argument_deltas(client: httpx.Client) -> None:
    events = sse_events(chat(client, "Weather in Oslo?", tools=[WEATHER_TOOL], stream=True))
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert len(calls) > 2
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    assert set(orjson.loads(arguments)) == {"city", "days", "unit"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_turn_without_reasoning_content_is_rejected(sim: RunningSimulator) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    history = [
        *user("What time is it?"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    with pytest.raises(litellm.BadRequestError, match="reasoning_content in the thinking mode"):
        await acomplete(sim, "", messages=history, tools=[TIME_TOOL])
    off = await acomplete(
        sim, "", messages=history, tools=[TIME_TOOL], thinking={"type": "disabled"}
    )
    assert off.choices[0].finish_reason == "stop"
    # Enabling thinking explicitly makes litellm paper over the gap with a " " placeholder.
    on = await acomplete(sim, "", messages=history, tools=[TIME_TOOL], thinking={"type": "enabled"})
    assert on.choices[0].finish_reason == "stop"
    assert sim.requests()[-1].body["messages"][1]["reasoning_content"] == " "  # type: ignore[index]


async def test_auth_is_enforced(sim: RunningSimulator) -> None:
    body = {"model": PRO, "messages": user("hi")}
    with httpx.Client(base_url=sim.url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
            response = anonymous.post("/chat/completions", json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
        assert anonymous.get("/models").status_code == 401
        assert anonymous.get("/_sim/stats").status_code == 200  # the control plane is open
    with pytest.raises(litellm.AuthenticationError):
        await acomplete(sim, "hi", api_key="sk-wrong")


async def test_unknown_model_is_deepseeks_model_not_exist(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    response = client.post("/chat/completions", json={"model": "gpt-4o", "messages": user("hi")})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Model Not Exist",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }
    with pytest.raises(litellm.BadRequestError, match="Model Not Exist"):
        await acomplete(sim, "hi", model="deepseek-v9")


def test_malformed_bodies_are_rejected(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert (
        client.post("/chat/completions", content=b"{not json", headers=headers).status_code == 400
    )
    assert client.post("/chat/completions", json={"model": PRO}).status_code == 422
    assert client.post("/chat/completions", json={"messages": user("x")}).status_code == 422
    assert chat(client, "x", max_tokens=0).status_code == 400
    bad_role = {"model": PRO, "messages": [{"role": "robot", "content": "x"}]}
    assert client.post("/chat/completions", json=bad_role).status_code == 400


async def test_context_overflow_maps_to_context_window_exceeded(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    long_text = "word " * 100
    response = client.post("/chat/completions", json={"model": TINY, "messages": user(long_text)})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "This model's maximum context length is 64 tokens. However, you requested"
    )
    with pytest.raises(litellm.ContextWindowExceededError):
        await acomplete(sim, long_text, model=TINY)
    assert (
        client.post(
            "/chat/completions", json={"model": TINY, "messages": user("short"), "max_tokens": 60}
        ).status_code
        == 400
    )  # max_tokens counts against the window too


async def test_prefix_cache_hits_follow_up_turn_only_on_the_same_model(
    sim: RunningSimulator,
) -> None:
    turn1 = [{"role": "system", "content": "You are terse. " * 20}, *user("First question?")]
    first = await acomplete(sim, "", messages=turn1)
    assert first.usage.prompt_cache_hit_tokens == 0
    reply = first.choices[0].message
    turn2 = [
        *turn1,
        {
            "role": "assistant",
            "content": reply.content,
            "reasoning_content": reply.reasoning_content,
        },
        *user("Follow-up question?"),
    ]
    second = await acomplete(sim, "", messages=turn2)
    usage = second.usage
    assert usage.prompt_cache_hit_tokens > first.usage.prompt_tokens  # prompt + answer reused
    assert 0 < usage.prompt_cache_miss_tokens < 15  # only the new user message
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_cache_hit_tokens
    other = await acomplete(sim, "", messages=turn2, model=FLASH)
    assert other.usage.prompt_cache_hit_tokens == 0
    assert other.usage.prompt_tokens == usage.prompt_tokens


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, litellm.BadRequestError),
        (404, litellm.NotFoundError),
        (429, litellm.RateLimitError),
        (500, litellm.InternalServerError),
        (503, litellm.ServiceUnavailableError),
    ],
)
async def test_status_marker_maps_to_litellm_exception(
    sim: RunningSimulator, status: int, error: type[Exception]
) -> None:
    for stream in (False, True):
        with pytest.raises(error) as caught:
            await acomplete(sim, f"fail [[sim:status={status}]]", stream=stream)
        assert getattr(caught.value, "status_code", None) == status


def test_rate_limit_sends_retry_after(client: httpx.Client) -> None:
    response = chat(client, "slow down [[sim:retry_after=2]]")
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert chat(client, "[[sim:status=429]]").headers["retry-after"] == "1"
    assert "retry-after" not in chat(client, "[[sim:status=500]]").headers
    assert chat(client, "[[sim:bogus=1]]").status_code == 400


async def test_delay_marker_holds_the_headers(sim: RunningSimulator, client: httpx.Client) -> None:
    started = time.monotonic()
    assert chat(client, "wait [[sim:delay_ms=150]]").status_code == 200
    assert time.monotonic() - started >= 0.15
    with pytest.raises(litellm.Timeout):
        await acomplete(sim, "wait [[sim:delay_ms=800]]", timeout=0.1)


async def test_disconnect_marker_drops_the_connection(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    body = {"model": PRO, "messages": user("drop [[sim:disconnect_after=5]]"), "stream": True}
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=body) as response,
    ):
        received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 5 and "[DONE]" not in received[-1]
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, "drop [[sim:disconnect_after=1]]")
    with pytest.raises(litellm.InternalServerError):
        await acomplete(sim, "drop [[sim:disconnect_after=1]]")
    stream = await acomplete(sim, "drop [[sim:disconnect_after=5]]", stream=True)
    with pytest.raises(litellm.exceptions.MidStreamFallbackError):
        async for _ in stream:
            pass


def test_queued_faults_hit_the_next_matching_requests(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    fault = {"count": 2, "model": FLASH, "status": 429, "retry_after_s": 3}
    assert client.post("/_sim/faults", json=fault).json() == {"queued": 2}
    assert chat(client, "pro is unaffected").status_code == 200
    flash = {"model": FLASH, "messages": user("flash")}
    statuses = [client.post("/chat/completions", json=flash) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].headers["retry-after"] == "3"
    client.post("/_sim/faults", json={"disconnect_after_chunks": 0})
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, "queued drop")
    client.post("/_sim/faults", json={"count": 5, "status": 500})
    client.delete("/_sim/faults")
    assert chat(client, "queue cleared").status_code == 200
    assert client.post("/_sim/faults", json={"count": 0}).status_code == 422


def test_random_faults_are_seeded() -> None:
    def statuses() -> list[int]:
        config = SimulatorConfig(
            profiles=default_profiles(), speed=0, fault_rate=0.5, fault_status=503, seed=7
        )
        body = {"model": FLASH, "messages": user("coin")}
        with start_in_thread(config) as running, httpx.Client(base_url=running.url) as http:
            return [http.post("/v1/chat/completions", json=body).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


def test_peek_endpoints_show_requests_and_stats(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    client.delete("/_sim/requests")
    chat(client, "recorded one")
    client.post("/chat/completions", json={"model": "nope", "messages": user("x")})
    recorded = client.get("/_sim/requests").json()
    assert [r["body"]["model"] for r in recorded] == [PRO, "nope"]
    assert recorded[0]["body"]["messages"] == user("recorded one")
    assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"
    stats = client.get("/_sim/stats").json()
    assert stats == {"total": 2, "by_model": {PRO: {"200": 1}, "nope": {"400": 1}}}
    assert sim.requests()[0].body == recorded[0]["body"]
    client.delete("/_sim/requests")
    assert sim.requests() == []


def test_recorded_requests_are_bounded() -> None:
    config = SimulatorConfig(profiles=default_profiles(), speed=0, max_recorded_requests=3)
    with start_in_thread(config) as running, httpx.Client(base_url=running.url) as http:
        for i in range(5):
            http.post("/chat/completions", json={"model": FLASH, "messages": user(str(i))})
        kept = [r.body["messages"][0]["content"] for r in running.requests() if r.body]
    assert kept == ["2", "3", "4"]


def test_latency_follows_the_profile(paced: httpx.Client) -> None:
    body = {"model": PRO, "messages": user("pace"), "max_tokens": 200}
    started = time.monotonic()
    response = paced.post("/chat/completions", json=body)
    elapsed = time.monotonic() - started
    expected = 0.01 + response.json()["usage"]["completion_tokens"] / 10_000
    assert expected <= elapsed < expected + 0.25
    body["messages"] = user("pace [[sim:slow=10]]")
    started = time.monotonic()
    paced.post("/chat/completions", json=body)
    assert time.monotonic() - started >= 10 * expected


def test_stream_is_paced_in_small_chunks(paced: httpx.Client) -> None:
    body = {"model": PRO, "messages": user("stream pace"), "stream": True}
    arrivals = []
    started = time.monotonic()
    with paced.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.01  # TTFT
    assert arrivals[-1] - arrivals[0] >= 0.02  # tokens keep flowing after the first
    assert len(arrivals) > 20  # 100 tok/s -> 10-token chunks, not one blob


def test_cli_arguments_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    args = parser.parse_args(
        [
            "--speed",
            "0",
            "--ttft-ms",
            f"{PRO}=50",
            "--tokens-per-s",
            "deepseek-new=99",
            "--api-key",
            "k",
        ]
    )
    config = simulator_config(args)
    assert config.speed == 0 and config.api_key == "k"
    assert config.profiles[PRO].ttft_ms == 50 and config.profiles[PRO].tokens_per_s == 30
    assert config.profiles["deepseek-new"].tokens_per_s == 99
    assert (args.host, args.port) == ("127.0.0.1", 8100)
    with pytest.raises(SystemExit):
        parser.parse_args(["--ttft-ms", "no-equals-sign"])
