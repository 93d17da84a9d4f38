"""The Anthropic Messages door end to end: the official `anthropic` SDK against flashpro, relayed
in Anthropic format to the simulated DeepSeek's `/anthropic/v1/messages`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from router.simulator.server import RecordedRequest, RunningSimulator
from tests.conftest import HOSTILE_FIELDS, UPSTREAM_KEY
from tests.fault_policy import CLIENT_KEY, keyed_flashpro

HOSTILE = {k: v for k, v in HOSTILE_FIELDS.items() if k != "metadata"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather now in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(base: str, key: str | None = "fp-test-key", **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, **options)


def relayed(sim: RunningSimulator) -> list[RecordedRequest]:
    return [r for r in sim.requests() if r.path == "/anthropic/v1/messages"]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_a_claude_model_name_is_routed_and_answered_in_anthropic_format(
    flashpro: str, sim: RunningSimulator
) -> None:
    raw = client(flashpro).messages.with_raw_response.create(
        model="claude-sonnet-5-5", max_tokens=400, messages=ask("Write a haiku about routers")
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[-1].type == "text" and message.content[-1].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    tier = raw.headers["x-flashpro-tier"]
    assert tier in ("flash", "pro")  # `claude-*` names route through `auto`: never Pro-Max here
    (upstream,) = relayed(sim)
    assert upstream.headers["x-api-key"] == UPSTREAM_KEY
    assert upstream.body is not None
    assert upstream.body["model"] == message.model == raw.headers["x-flashpro-model"]
    assert upstream.body["thinking"] == {"type": "enabled" if tier != "flash" else "disabled"}


def test_a_pinned_tier_sets_model_thinking_and_effort_upstream(
    flashpro: str, sim: RunningSimulator
) -> None:
    raw = client(flashpro).messages.with_raw_response.create(
        model="pro",
        max_tokens=2000,
        messages=ask("Is 1 + 1 = 2?"),
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "user-7"},
        extra_body={"top_k": 5, "service_tier": "auto", "container": "c-1", **HOSTILE},
    )
    message = raw.parse()
    assert raw.headers["x-flashpro-tier"] == "pro"
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    (upstream,) = relayed(sim)
    body = upstream.body
    assert body is not None
    assert body["model"] == "deepseek-v4-pro"
    assert body["thinking"] == {"type": "enabled"}  # the tier's, not the client's budget
    assert body["output_config"] == {"effort": "high"}
    # DeepSeek isolates its cache per user_id: the caller's tenant hash, as on chat
    assert body["metadata"]["user_id"].startswith("flashpro-key-")
    for dropped in ("top_k", "service_tier", "container", *HOSTILE):
        assert dropped not in body
    assert "anthropic-version" not in upstream.headers


def test_streaming_relays_thinking_signature_and_text_events(
    flashpro: str, sim: RunningSimulator
) -> None:
    raw = client(flashpro).messages.with_raw_response.create(
        model="pro", max_tokens=2000, messages=ask("Explain the birthday paradox"), stream=True
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "ping" not in kinds  # the SDK skips pings; they were on the wire (raw test below)
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas.index("thinking_delta") < deltas.index("signature_delta")
    assert deltas.index("signature_delta") < deltas.index("text_delta")
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens > 0
    assert raw.headers["x-flashpro-tier"] == "pro"
    assert raw.headers["content-type"].startswith("text/event-stream")


def test_a_stream_and_a_whole_answer_agree(flashpro: str, sim: RunningSimulator) -> None:
    messages = ask("Name three sorting algorithms")
    whole = client(flashpro).messages.create(model="pro", max_tokens=1500, messages=messages)
    with client(flashpro).messages.stream(model="pro", max_tokens=1500, messages=messages) as s:
        streamed = s.get_final_message()
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert streamed.usage.output_tokens == whole.usage.output_tokens


def test_ping_and_named_events_are_on_the_wire(flashpro: str, sim: RunningSimulator) -> None:
    body = {"model": "flash", "max_tokens": 300, "stream": True, "messages": ask("hi")}
    with httpx.stream("POST", flashpro + "/v1/messages", json=body, timeout=30) as response:
        text = response.read().decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert blocks[0].startswith("event: message_start\ndata: {")
    assert blocks[1] == 'event: ping\ndata: {"type":"ping"}'
    assert blocks[-1] == 'event: message_stop\ndata: {"type":"message_stop"}'
    assert "[DONE]" not in text


def test_a_two_turn_tool_loop(flashpro: str, sim: RunningSimulator) -> None:
    api = client(flashpro)
    messages: list[Any] = ask("What's the weather in Lisbon?")
    first = api.messages.create(
        model="claude-sonnet-5-5", max_tokens=1000, tools=[WEATHER], messages=messages
    )
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "14 C, sunny"}],
        },
    ]
    second = api.messages.create(
        model="claude-sonnet-5-5", max_tokens=1000, tools=[WEATHER], messages=messages
    )
    assert second.stop_reason == "end_turn" and second.content[-1].type == "text"


def test_a_tool_turn_from_a_non_thinking_tier_continues_on_a_thinking_tier(
    flashpro: str, sim: RunningSimulator
) -> None:
    """DeepSeek refuses a tool-use turn without its thinking block while thinking is on; a turn
    Flash served (thinking off) has none, so flashpro gives it an empty one."""
    api = client(flashpro)
    messages: list[Any] = ask("What's the weather in Oslo?")
    first = api.messages.create(model="flash", max_tokens=500, tools=[WEATHER], messages=messages)
    assert [b.type for b in first.content] == ["tool_use"]
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": first.content[0].id, "content": "-3 C"}
            ],
        },
    ]
    second = api.messages.create(model="pro", max_tokens=2000, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn"
    sent = relayed(sim)[-1].body
    assert sent is not None
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "",
        "signature": "",
    }
    # the simulator is as strict as DeepSeek: the turn as the client sent it is refused
    direct = {
        **sent,
        "messages": [
            messages[0],
            {"role": "assistant", "content": [first.content[0].model_dump()]},
            messages[2],
        ],
    }
    refused = httpx.post(
        sim.url + "/anthropic/v1/messages", json=direct, headers={"x-api-key": UPSTREAM_KEY}
    )
    assert refused.status_code == 400
    assert "content[].thinking" in refused.json()["error"]["message"]


def test_count_tokens_grows_with_the_prompt_and_the_tools(flashpro: str) -> None:
    api = client(flashpro)
    short = api.messages.count_tokens(model="claude-sonnet-5-5", messages=ask("hello"))
    long = api.messages.count_tokens(model="claude-sonnet-5-5", messages=ask("hello " * 200))
    tools = api.messages.count_tokens(
        model="claude-sonnet-5-5", messages=ask("hello " * 200), tools=[WEATHER]
    )
    assert 0 < short.input_tokens < long.input_tokens < tools.input_tokens
    assert 250 <= long.input_tokens <= 350  # about four characters a token


def test_the_cache_serves_repeats_per_format(flashpro: str, sim: RunningSimulator) -> None:
    api = client(flashpro, key="fp-cache-key")
    messages = ask("Define a monoid in one sentence")
    repeatable = {"temperature": 0}  # the SDK has no sampling parameters: sent as extra fields
    first = api.messages.with_raw_response.create(
        model="flash", max_tokens=1000, messages=messages, extra_body=repeatable
    )
    again = api.messages.with_raw_response.create(
        model="flash", max_tokens=1000, messages=messages, extra_body=repeatable
    )
    assert first.parse().stop_reason == "end_turn"  # a whole answer: kept
    assert first.headers["x-flashpro-cache"] == "miss"
    assert again.headers["x-flashpro-cache"] == "hit"
    assert again.parse().content == first.parse().content
    with api.messages.stream(
        model="flash", max_tokens=1000, messages=messages, extra_body=repeatable
    ) as s:
        replayed = s.get_final_message()
        assert s.response.headers["x-flashpro-cache"] == "hit"
    assert [(b.type, b.text) for b in replayed.content if b.type == "text"] == [
        (b.type, b.text) for b in first.parse().content if b.type == "text"
    ]
    chat = httpx.post(
        flashpro + "/v1/chat/completions",
        headers={"authorization": "Bearer fp-cache-key"},
        json={"model": "flash", "max_tokens": 1000, "temperature": 0, "messages": messages},
    )
    assert chat.headers["x-flashpro-cache"] == "miss"  # a chat body is never a message's answer
    assert len(relayed(sim)) == 1


def test_each_front_door_is_counted_under_its_api_label(flashpro: str) -> None:
    def counted(api: str) -> float:
        metrics = httpx.get(flashpro + "/metrics").text
        prefix = "flashpro_requests_total{"
        lines = [line for line in metrics.split("\n") if line.startswith(prefix)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if f'api="{api}"' in line)

    before = {api: counted(api) for api in ("chat", "messages", "responses")}
    client(flashpro).messages.create(model="flash", max_tokens=100, messages=ask("ping"))
    httpx.post(flashpro + "/v1/chat/completions", json={"model": "flash", "messages": ask("ping")})
    httpx.post(flashpro + "/v1/responses", json={"model": "flash", "input": "ping"})
    httpx.post(flashpro + "/v1/messages", json={"model": "flash", "messages": ask("no max")})
    assert counted("chat") == before["chat"] + 1
    assert counted("responses") == before["responses"] + 1
    assert counted("messages") == before["messages"] + 2  # the 400 counts too


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        (
            {"model": "gpt-9", "max_tokens": 10, "messages": ask("hi")},
            404,
            "not_found_error",
            "gpt-9",
        ),
        ({"model": "flash", "messages": ask("hi")}, 400, "invalid_request_error", "max_tokens"),
        (
            {"model": "flash", "max_tokens": 10, "messages": []},
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            {
                "model": "flash",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "image",
        ),
    ],
)
def test_bad_requests_get_anthropic_errors_before_any_upstream_call(
    flashpro: str, sim: RunningSimulator, body: dict[str, Any], status: int, kind: str, says: str
) -> None:
    response = httpx.post(flashpro + "/v1/messages", json=body)
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert says in error["error"]["message"]
    assert relayed(sim) == []


def test_server_tools_are_left_out_and_named(flashpro: str, sim: RunningSimulator) -> None:
    """Agents declare provider-run tools (web search) in every request; no tier runs them."""
    raw = client(flashpro).messages.with_raw_response.create(
        model="flash",
        max_tokens=300,
        messages=ask("What's new in Lisbon?"),
        tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
    )
    assert raw.headers["x-flashpro-ignored-tools"] == "web_search"
    assert raw.parse().stop_reason == "tool_use"
    (sent,) = relayed(sim)
    assert sent.body is not None and sent.body["tools"] == [WEATHER]
    only_server = client(flashpro).messages.with_raw_response.create(
        model="flash",
        max_tokens=300,
        messages=ask("Search the news"),
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any"},
    )
    assert only_server.parse().stop_reason == "end_turn"
    last = relayed(sim)[-1].body
    assert last is not None and "tools" not in last and "tool_choice" not in last


def test_malformed_and_oversized_bodies_get_anthropic_errors(flashpro: str) -> None:
    bad = httpx.post(flashpro + "/v1/messages", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    deep = httpx.post(flashpro + "/v1/messages", content=b'{"a":' * 100 + b"1" + b"}" * 100)
    assert deep.status_code == 400 and deep.json()["error"]["type"] == "invalid_request_error"
    huge = httpx.post(flashpro + "/v1/messages", content=b"x" * (300 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "request_too_large"
    wrong = httpx.get(flashpro + "/v1/messages")
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"


def test_the_sdk_raises_its_own_error_types(flashpro: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(flashpro).messages.create(model="gpt-9", max_tokens=10, messages=ask("hi"))
    assert missing.value.status_code == 404
    with pytest.raises(anthropic.BadRequestError, match="image"):
        client(flashpro).messages.create(
            model="flash",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ],
                }
            ],
        )


@pytest.fixture
def strict(simulator: RunningSimulator, upstream_env: None, tmp_path: Path) -> Iterator[str]:
    """flashpro under a policy that requires client keys, with fast retries."""
    with keyed_flashpro(simulator, tmp_path) as base:
        yield base


def test_flashpro_keys_work_as_x_api_key_or_bearer(strict: str, sim: RunningSimulator) -> None:
    by_header = client(strict, key=CLIENT_KEY).messages.create(
        model="flash", max_tokens=50, messages=ask("hi")
    )
    assert by_header.content
    by_bearer = anthropic.Anthropic(
        base_url=strict, api_key=None, auth_token=CLIENT_KEY, max_retries=0
    ).messages.create(model="flash", max_tokens=50, messages=ask("hi"))
    assert by_bearer.content
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(strict, key="fp-not-a-key").messages.create(
            model="flash", max_tokens=50, messages=ask("hi")
        )
    assert refused.value.status_code == 401
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert all(r.headers.get("x-api-key") == UPSTREAM_KEY for r in relayed(sim))
    with pytest.raises(anthropic.AuthenticationError):
        client(strict, key="fp-not-a-key").messages.count_tokens(model="flash", messages=ask("hi"))


def test_upstream_failures_map_to_anthropic_statuses(strict: str, sim: RunningSimulator) -> None:
    api = client(strict, key=CLIENT_KEY)
    with pytest.raises(anthropic.RateLimitError) as limited:
        api.messages.create(model="flash", max_tokens=50, messages=ask("hi [[sim:status=429]]"))
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.BadRequestError):
        api.messages.create(model="flash", max_tokens=50, messages=ask("hi [[sim:status=400]]"))


def test_a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event(
    strict: str, sim: RunningSimulator
) -> None:
    api = client(strict, key=CLIENT_KEY)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="upstream"):
        stream = api.messages.create(
            model="pro",
            max_tokens=2000,
            messages=ask("Tell me a long story [[sim:disconnect_after=6]]"),
            stream=True,
        )
        for event in stream:
            seen.append(event.type)
    assert seen[0] == "message_start" and "message_stop" not in seen


def test_route_explains_a_messages_body_as_it_would_be_routed(
    flashpro: str, sim: RunningSimulator
) -> None:
    body = {
        "model": "claude-haiku-5-5",
        "max_tokens": 100,
        "system": "Write a 5-10 word title for the conversation.",
        "messages": ask("User: how do I parse JSON lines in Python?"),
    }
    explained = httpx.post(flashpro + "/v1/route", json=body)
    assert explained.status_code == 200, explained.text
    decision = explained.json()
    assert decision["alias"] == "auto-economy" and decision["tier"] == "flash"
    raw = client(flashpro).messages.with_raw_response.create(**body)
    assert raw.headers["x-flashpro-tier"] == decision["tier"]
    assert raw.headers["x-flashpro-score"] == f"{decision['score']:.4f}"
    # valid as chat, not as Messages (no system role there): the header says which it is
    both = {"model": "flash", "messages": [{"role": "system", "content": "Be brief."}, *ask("hi")]}
    assert httpx.post(flashpro + "/v1/route", json=both).status_code == 200
    by_sdk = httpx.post(
        flashpro + "/v1/route", json=both, headers={"anthropic-version": "2023-06-01"}
    )
    assert by_sdk.status_code == 400 and "role" in by_sdk.json()["error"]["message"]
