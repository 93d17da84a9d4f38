"""The Anthropic wire format, pure parts: parsing and DeepSeek's compatibility rules, the chat
view the pipeline routes, the upstream body a tier sends, stream assembly and replay, and the
`claude-*` names the default policy routes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from router.routing.decide import target_of
from router.routing.policy import load_policy
from router.schemas_anthropic import (
    CountTokensRequest,
    MessagesRequest,
    chat_view,
    estimate_input_tokens,
)
from router.simulator.anthropic import parse_messages_request, upstream_model
from router.simulator.faults import SimError
from router.upstream.messages import (
    EMPTY_THINKING,
    MessageAssembler,
    events_of,
    is_complete,
    messages_body,
    usage_of,
)

POLICY, _ = load_policy(None)
TOOL = {"name": "read", "description": "Read a file", "input_schema": {"type": "object"}}


def request(**fields: Any) -> MessagesRequest:
    base: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100}
    return MessagesRequest.model_validate({**base, **fields})


def loop() -> list[dict[str, Any]]:
    """A user question, a tool use, its result: an agent's first round trip."""
    return [
        {"role": "user", "content": "Why does the build fail?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading the log."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "read",
                    "input": {"path": "build.log"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "error: missing ;"},
                {"type": "text", "text": "Be brief."},
            ],
        },
    ]


def test_the_chat_view_keeps_the_conversation_the_classifier_reads() -> None:
    view = chat_view(
        request(system=[{"type": "text", "text": "You are terse."}], messages=loop(), tools=[TOOL])
    )
    assert [m.role for m in view.messages] == ["system", "user", "assistant", "tool", "user"]
    assert view.messages[0].text() == "You are terse."
    assistant = view.messages[2]
    assert assistant.text() == "Reading the log."
    assert assistant.tool_calls is not None
    assert orjson.loads(assistant.tool_calls[0].function.arguments) == {"path": "build.log"}
    assert (
        view.messages[3].tool_call_id == "toolu_1" and view.messages[3].text() == "error: missing ;"
    )
    assert view.messages[-1].text() == "Be brief."  # the latest human turn is the last user turn
    assert view.tools == [
        {
            "type": "function",
            "function": {
                "name": "read",
                "description": "Read a file",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert view.max_tokens == 100 and view.model == "claude-sonnet-4-5"


def test_only_what_deepseek_reads_is_relayed() -> None:
    parsed = request(
        messages=[{"role": "user", "content": "hi"}],
        top_k=3,
        metadata={"user_id": "u1", "trace": "x"},
        service_tier="auto",
        container="c",
        mcp_servers=[{"type": "url", "url": "https://x"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "low"},
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        tools=[
            {**TOOL, "cache_control": {"type": "ephemeral"}},
            {"type": "bash_20250124", "name": "bash"},
        ],
        temperature=0.2,
        api_key="sk-client",
    )
    assert parsed.upstream_fields() == {
        "max_tokens": 100,
        "temperature": 0.2,
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "u1"},
    }
    assert parsed.ignored_tools() == ["bash"]


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "document",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]}
                ]
            },
            "redacted_thinking",
        ),
        ({"messages": [{"role": "system", "content": "hi"}]}, "role"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "tool"}},
            "tool_choice",
        ),
        ({"messages": []}, "messages"),
    ],
)
def test_what_deepseek_refuses_is_refused_at_parse(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError, match=where):
        request(**fields)


def test_max_tokens_is_required_except_for_counting() -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        MessagesRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
    counted = CountTokensRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    )
    assert 100 <= estimate_input_tokens(counted) <= 110


def test_the_cache_digest_is_canonical_and_per_format() -> None:
    one = request(messages=[{"role": "user", "content": "hi"}], temperature=0)
    same = MessagesRequest.model_validate(
        orjson.loads(
            b'{"temperature":0,"messages":[{"content":"hi","role":"user"}],"max_tokens":100,"model":"claude-opus-4","stream":true}'
        )
    )
    other = request(messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=101)
    assert one.digest() == same.digest() != other.digest()


def test_a_thinking_tier_gives_tool_turns_without_thinking_an_empty_block() -> None:
    parsed = request(messages=loop())
    body = messages_body(
        "deepseek/deepseek-v4-pro",
        parsed.upstream_messages(),
        parsed.upstream_fields(),
        "enabled",
        "max",
        stream=True,
    )
    assert body["model"] == "deepseek-v4-pro"
    assert body["thinking"] == {"type": "enabled"} and body["output_config"] == {"effort": "max"}
    assert body["stream"] is True
    assert body["messages"][1]["content"][0] == EMPTY_THINKING
    assert body["messages"][0] == {"role": "user", "content": "Why does the build fail?"}
    flash = messages_body(
        "deepseek-flash", parsed.upstream_messages(), {}, "disabled", None, stream=False
    )
    assert flash["thinking"] == {"type": "disabled"} and "output_config" not in flash
    assert flash["messages"][1]["content"][0]["type"] == "text"  # untouched with thinking off


ANSWER: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "deepseek-v4-pro",
    "content": [
        {
            "type": "thinking",
            "thinking": "The log says a semicolon is missing.",
            "signature": "c2ln",
        },
        {"type": "text", "text": "Add the missing semicolon."},
        {
            "type": "tool_use",
            "id": "toolu_2",
            "name": "read",
            "input": {"path": "main.c", "line": 3},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 80, "cache_read_input_tokens": 20, "output_tokens": 40},
}


def test_a_message_replayed_as_events_assembles_back_to_itself() -> None:
    events = events_of(ANSWER)
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-2]["type"] == "message_delta" and events[-1]["type"] == "message_stop"
    assembler = MessageAssembler()
    for event in events:
        assert not assembler.finished
        assembler.add(event)
    assert assembler.finished
    assert assembler.body() == ANSWER
    assert assembler.reported_usage() == usage_of(ANSWER["usage"])
    produced, thinking = assembler.produced_chars()
    assert thinking == len(ANSWER["content"][0]["thinking"]) and produced > thinking


def test_a_cut_stream_has_no_reported_usage_and_is_not_complete() -> None:
    assembler = MessageAssembler()
    for event in events_of(ANSWER)[:4]:
        assembler.add(event)
    assert not assembler.finished and assembler.reported_usage() is None
    assert not is_complete({**ANSWER, "stop_reason": "max_tokens"})
    assert is_complete(ANSWER)


def test_anthropic_usage_counts_cache_reads_as_prompt_hits() -> None:
    usage = usage_of(ANSWER["usage"])
    assert (usage.prompt_tokens, usage.cache_hit_tokens, usage.completion_tokens) == (100, 20, 40)


@pytest.mark.parametrize(
    ("model", "alias", "tier"),
    [
        ("claude-opus-4-1-20250805", "auto-quality", None),
        ("claude-3-opus-20240229", "auto-quality", None),
        ("claude-3-5-haiku-20241022", "auto-economy", None),
        ("claude-haiku-4-5", "auto-economy", None),
        ("claude-sonnet-4-5-20250929", "auto", None),
        ("claude-opus-5-5", "auto-quality", None),
        ("claude-haiku-5-5", "auto-economy", None),
        ("claude-sonnet-5-5", "auto", None),
        ("auto", "auto", None),
        ("deepseek-v4-pro", None, "pro"),
        ("flash", None, "flash"),
    ],
)
def test_agent_model_names_are_routed_by_the_default_policy(
    model: str, alias: str | None, tier: str | None
) -> None:
    assert target_of(POLICY, model) == (alias, tier)


def test_the_simulator_maps_and_refuses_names_as_deepseek_does() -> None:
    known = ("deepseek-flash", "deepseek-v4-pro")
    assert upstream_model("claude-opus-4", known) == "deepseek-v4-pro"
    assert upstream_model("claude-sonnet-4-5", known) == "deepseek-flash"
    assert upstream_model("deepseek-v4-pro", known) == "deepseek-v4-pro"
    with pytest.raises(SimError):
        upstream_model("gpt-4o", known)
    with pytest.raises(SimError, match="not supported"):
        parse_messages_request(
            {
                "model": "deepseek-flash",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image"}]}],
            },
            known,
        )
    call = parse_messages_request(
        {
            "model": "deepseek-flash",
            "max_tokens": 5,
            "messages": loop(),
            "thinking": {"type": "enabled"},
        },
        known,
    )
    assert call.thinking_blocks_missing


def test_streamed_tool_input_that_is_not_json_is_never_kept() -> None:
    assembler = MessageAssembler()
    for event in events_of(ANSWER):
        if event.get("delta", {}).get("type") == "input_json_delta":
            event = {**event, "delta": {"type": "input_json_delta", "partial_json": '{"path": '}}
        assembler.add(event)
    body = assembler.body()
    assert assembler.finished and body["stop_reason"] is None and not is_complete(body)
