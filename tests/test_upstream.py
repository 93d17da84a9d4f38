"""Both transports (direct HTTP and litellm) against the simulated DeepSeek server: same bodies on
the wire, same answers, same streams, same error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from router.errors import (
    ContextTooLong,
    FlashproError,
    UpstreamAuthFailed,
    UpstreamBalanceExhausted,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from router.routing.cost import Usage
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.upstream.assemble import StreamAssembler
from router.upstream.base import Chunk, Completion, LiteLLMUpstream, Upstream, UpstreamCall
from router.upstream.transport import ByProvider, DirectUpstream, open_upstream, request_body
from tests.conftest import HOSTILE_FIELDS, UPSTREAM_KEY, WEATHER_TOOL

T = TypeVar("T")
TRANSPORTS = ("direct", "litellm")


def make(transport: str) -> Upstream:
    if transport == "direct":
        return DirectUpstream(secrets=(UPSTREAM_KEY,))
    return LiteLLMUpstream(secrets=(UPSTREAM_KEY,))


def run(transport: str, action: Callable[[Upstream], Awaitable[T]]) -> T:
    """Run one action on a fresh upstream in its own event loop (the pool belongs to the loop)."""

    async def go() -> T:
        upstream = make(transport)
        try:
            return await action(upstream)
        finally:
            if isinstance(upstream, DirectUpstream):
                await upstream.aclose()

    return asyncio.run(go())


def call(
    sim: RunningSimulator,
    text: str = "Say something.",
    *,
    model: str = "deepseek/deepseek-v4-flash",
    thinking: str = "disabled",
    effort: str | None = None,
    params: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    timeout_s: float = 10.0,
    api_key: str = UPSTREAM_KEY,
) -> UpstreamCall:
    return UpstreamCall(
        model=model,
        messages=messages or [{"role": "user", "content": text}],
        params=params or {},
        thinking=thinking,
        reasoning_effort=effort,
        api_base=sim.url,
        api_key=api_key,
        timeout_s=timeout_s,
    )


async def collect(chunks: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in chunks]


def streamed(upstream: Upstream, c: UpstreamCall) -> Awaitable[list[Chunk]]:
    async def go() -> list[Chunk]:
        return await collect(await upstream.stream(c))

    return go()


def sent_body(sim: RunningSimulator) -> dict[str, Any]:
    body = sim.requests()[-1].body
    assert body is not None
    return body


def essence(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a client reads from an answer, independent of the transport's extra fields."""
    out = []
    for choice in body["choices"]:
        message = choice["message"]
        calls = [
            (tc["function"]["name"], tc["function"]["arguments"])
            for tc in message.get("tool_calls") or ()
        ]
        out.append(
            (
                message.get("content") or "",
                message.get("reasoning_content"),
                calls,
                choice["finish_reason"],
            )
        )
    return out


def tokens(usage: Usage) -> tuple[int, int, int]:
    """Usage without the prefix-cache hit, which differs between a first and a second call."""
    return usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 C."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "Rome?"}],
    },
]

SHAPES: list[dict[str, Any]] = [
    {
        "params": {
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 50,
            "stop": ["END"],
            "seed": 7,
            "user": "u-1",
            "n": 1,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "logprobs": False,
            "response_format": {"type": "json_object"},
        },
        "text": "Say something in JSON.",
    },
    {
        "model": "deepseek/deepseek-v4-pro",
        "thinking": "enabled",
        "effort": "max",
        "messages": HISTORY,
        "params": {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
    },
    {
        "model": "deepseek/deepseek-v4-pro",
        "thinking": "disabled",
        "effort": "high",
        "messages": HISTORY,
        "params": {"tools": [WEATHER_TOOL]},
    },
    {"thinking": "enabled", "effort": "low", "messages": HISTORY},
]


@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("stream", [False, True])
def test_both_transports_send_the_same_body(
    sim: RunningSimulator, shape: int, stream: bool
) -> None:
    c = call(sim, **SHAPES[shape])
    bodies = {}
    for transport in TRANSPORTS:
        if stream:
            run(transport, lambda u: streamed(u, c))
        else:
            run(transport, lambda u: u.complete(c))
        bodies[transport] = sent_body(sim)
        assert sim.requests()[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert bodies["direct"] == bodies["litellm"]


def test_plain_answers_are_identical(sim: RunningSimulator) -> None:
    c = call(sim, "What is the capital of France?", params={"temperature": 0})
    answers = {t: run(t, lambda u: u.complete(c)) for t in TRANSPORTS}
    direct, via_litellm = answers["direct"], answers["litellm"]
    assert isinstance(direct, Completion)
    assert essence(direct.body) == essence(via_litellm.body)
    assert tokens(direct.usage) == tokens(via_litellm.usage)
    assert direct.usage.completion_tokens > 0


def test_streams_relay_reasoning_first_then_content_and_usage(sim: RunningSimulator) -> None:
    c = call(
        sim,
        "Prove that 17 is prime.",
        model="deepseek/deepseek-v4-pro",
        thinking="enabled",
        effort="high",
    )
    results = {}
    for transport in TRANSPORTS:
        chunks = run(transport, lambda u: streamed(u, c))
        kinds = [
            key
            for chunk in chunks
            for choice in chunk.data.get("choices") or ()
            for key in ("reasoning_content", "content")
            if (choice.get("delta") or {}).get(key)
        ]
        assert kinds[0] == "reasoning_content" and kinds[-1] == "content", transport
        assert kinds.index("content") > max(
            i for i, k in enumerate(kinds) if k == "reasoning_content"
        )
        usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
        assert len(usages) == 1, transport
        assembler = StreamAssembler()
        for chunk in chunks:
            assembler.add(chunk.data)
        assert assembler.finished
        results[transport] = (essence(assembler.body()), tokens(usages[0]))
    assert results["direct"] == results["litellm"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_identical(sim: RunningSimulator, stream: bool) -> None:
    c = call(sim, "Weather in Oslo?", params={"tools": [WEATHER_TOOL]})
    results = {}
    for transport in TRANSPORTS:
        if stream:
            assembler = StreamAssembler()
            for chunk in run(transport, lambda u: streamed(u, c)):
                assembler.add(chunk.data)
            body = assembler.body()
        else:
            body = run(transport, lambda u: u.complete(c)).body
        results[transport] = essence(body)
    assert results["direct"] == results["litellm"]
    assert results["direct"][0][2][0][0] == "get_weather"
    assert results["direct"][0][3] == "tool_calls"


def failure(transport: str, c: UpstreamCall, stream: bool) -> FlashproError:
    async def go(upstream: Upstream) -> None:
        if stream:
            await collect(await upstream.stream(c))
        else:
            await upstream.complete(c)

    with pytest.raises(FlashproError) as caught:
        run(transport, go)
    return caught.value


HUGE = "word " * 1_050_000

ERRORS: list[tuple[dict[str, Any], type[FlashproError], int, dict[str, str]]] = [
    (
        {"text": "x [[sim:status=429]][[sim:retry_after=2]]"},
        UpstreamRateLimited,
        429,
        {"Retry-After": "2"},
    ),
    ({"text": "x [[sim:status=500]]"}, UpstreamError, 502, {}),
    ({"text": "x [[sim:status=503]]"}, UpstreamOverloaded, 503, {}),
    ({"text": "x [[sim:status=402]]"}, UpstreamBalanceExhausted, 503, {}),
    ({"text": "x [[sim:status=404]]"}, UpstreamRejected, 404, {}),
    ({"text": "x [[sim:status=422]]"}, UpstreamRejected, 422, {}),
    ({"text": "x [[sim:delay_ms=3000]]", "timeout_s": 0.5}, UpstreamTimeout, 504, {}),
    ({"api_key": "sk-wrong-key-0000000000"}, UpstreamAuthFailed, 502, {}),
    ({"model": "deepseek/deepseek-nonexistent"}, UpstreamRejected, 400, {}),
    ({"text": HUGE}, ContextTooLong, 400, {}),
]


@pytest.mark.parametrize("case", range(len(ERRORS)))
@pytest.mark.parametrize("stream", [False, True])
def test_errors_map_the_same_way(sim: RunningSimulator, case: int, stream: bool) -> None:
    kwargs, kind, status, headers = ERRORS[case]
    c = call(sim, **kwargs)
    for transport in TRANSPORTS:
        error = failure(transport, c, stream)
        assert type(error) is kind, (transport, error)
        assert (error.status, error.headers) == (status, headers), transport
        assert UPSTREAM_KEY not in error.message
        assert "sk-wrong-key" not in error.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mid_stream_drop_raises_upstream_error(sim: RunningSimulator, transport: str) -> None:
    c = call(
        sim, "drop [[sim:disconnect_after=3]]", model="deepseek/deepseek-v4-pro", thinking="enabled"
    )

    async def go(upstream: Upstream) -> int:
        received = 0
        chunks = await upstream.stream(c)
        with pytest.raises(UpstreamError):
            async for _ in chunks:
                received += 1
        return received

    assert run(transport, go) >= 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_upstream_is_502(transport: str) -> None:
    c = UpstreamCall(
        "deepseek/deepseek-v4-flash",
        [{"role": "user", "content": "hi"}],
        {},
        "disabled",
        None,
        "http://127.0.0.1:9",
        "sk-x",
        2.0,
    )
    with pytest.raises(UpstreamError):
        run(transport, lambda u: u.complete(c))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_fields_never_reach_transport_settings(
    sim: RunningSimulator, transport: str
) -> None:
    request = ChatRequest.model_validate(
        {
            "model": "flash",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5,
            **HOSTILE_FIELDS,
        }
    )
    c = call(sim, params=request.upstream_params())
    run(transport, lambda u: u.complete(c))
    received = sim.requests()[-1]
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-evil" not in received.headers
    body = sent_body(sim)
    assert body["temperature"] == 0.5
    for name in HOSTILE_FIELDS:
        assert name not in body, name


def test_request_shaping_rules() -> None:
    base = UpstreamCall(
        "deepseek/deepseek-v4-pro", HISTORY, {"user": "u"}, "disabled", "max", None, None, 1.0
    )
    off = request_body(base, stream=False)
    assert off["thinking"] == {"type": "disabled"} and "reasoning_effort" not in off
    assert all("reasoning_content" not in m for m in off["messages"])
    assert "user" not in off
    assert off["messages"][-1]["content"] == "And Rome?"
    on = request_body(
        UpstreamCall(
            base.model,
            HISTORY,
            {"tools": [WEATHER_TOOL, {"type": "web_search"}]},
            "enabled",
            "max",
            None,
            None,
            1.0,
        ),
        stream=True,
    )
    assert on["reasoning_effort"] == "max"
    assert [m.get("reasoning_content") for m in on["messages"] if m["role"] == "assistant"] == [
        " ",
        " ",
    ]
    assert on["tools"] == [WEATHER_TOOL]
    assert on["stream_options"] == {"include_usage": True}
    bogus = UpstreamCall(base.model, HISTORY, {}, "enabled", "bogus", None, None, 1.0)
    assert "reasoning_effort" not in request_body(bogus, stream=False)


class Recording:
    def __init__(self) -> None:
        self.models: list[str] = []

    async def complete(self, call: UpstreamCall) -> Completion:
        self.models.append(call.model)
        return Completion({"choices": []}, Usage())

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        raise NotImplementedError


def test_other_providers_go_through_litellm() -> None:
    other = Recording()

    async def go() -> None:
        switch = ByProvider(DirectUpstream(), other)
        await switch.complete(
            UpstreamCall("openai/gpt-4o", [], {}, "disabled", None, None, None, 1.0)
        )
        await switch.aclose()

    asyncio.run(go())
    assert other.models == ["openai/gpt-4o"]


def test_transport_setting_picks_the_upstream() -> None:
    async def go() -> None:
        for transport, chat_direct in (("litellm", False), ("direct", True)):
            chosen = open_upstream(transport, ())
            assert isinstance(chosen, ByProvider) and isinstance(chosen.other, LiteLLMUpstream)
            assert chosen.chat_direct is chat_direct
            await chosen.aclose()

    asyncio.run(go())


def test_anthropic_format_calls_always_go_direct() -> None:
    other = Recording()

    async def go() -> None:
        switch = ByProvider(DirectUpstream(), other, chat_direct=False)
        chat = UpstreamCall("deepseek/deepseek-v4-pro", [], {}, "enabled", "high", None, None, 1.0)
        await switch.complete(chat)
        messages = replace(chat, wire="messages")
        assert switch._for(messages) is switch.direct
        await switch.aclose()

    asyncio.run(go())
    assert other.models == ["deepseek/deepseek-v4-pro"]


def test_image_parts_go_through_on_a_vision_tier_whatever_its_model_is_named() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    parts = [{"type": "text", "text": "what is this?"}, image]
    call = UpstreamCall(
        "deepseek/deepseek-v4-pro",
        [{"role": "user", "content": parts}],
        {},
        "disabled",
        None,
        None,
        None,
        1.0,
    )
    assert request_body(call, stream=False)["messages"][0]["content"] == "what is this?"
    sent = request_body(replace(call, vision=True), stream=False)["messages"][0]["content"]
    assert sent == parts
