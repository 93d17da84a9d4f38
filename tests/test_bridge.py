"""The Responses <-> chat translation (litellm's bridge, as flashpro uses it), without a server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from router.errors import InvalidRequest
from router.upstream.bridge import ResponsesBridge, ResponsesRequest, conversation

BRIDGE = ResponsesBridge()
TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "auto", **fields})


def chat_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "deepseek-v4-pro",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
    }


def test_instructions_and_input_become_messages() -> None:
    chat = BRIDGE.to_chat(request(input="Hi", instructions="Be brief.", max_output_tokens=50))
    assert chat == {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 50,
    }


def test_developer_messages_reach_deepseek_as_system() -> None:
    given = [
        {"type": "message", "role": "developer", "content": "Rules."},
        {"role": "user", "content": "x"},
    ]
    chat = BRIDGE.to_chat(request(input=given))
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]


def test_function_tools_and_tool_choice_become_chat_tools() -> None:
    chat = BRIDGE.to_chat(
        request(input="x", tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})
    )
    assert chat["tools"][0]["type"] == "function"
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_a_tool_turn_keeps_its_reasoning_for_deepseek() -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Hmm."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]
    messages = BRIDGE.to_chat(request(input=history, tools=[TOOL]))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["reasoning_content"] == "Hmm."
    assert messages[1]["tool_calls"][0]["id"] == "c1"
    assert messages[2]["tool_call_id"] == "c1"


def test_the_stored_turns_come_first() -> None:
    history = [{"type": "message", "role": "user", "content": "one"}]
    chat = BRIDGE.to_chat(request(input="two", instructions="Sys."), history)
    assert [m.get("content") for m in chat["messages"]] == ["Sys.", "one", "two"]


def test_a_stream_asks_for_usage() -> None:
    chat = BRIDGE.to_chat(request(input="x", stream=True))
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_reasoning_effort_is_left_to_the_tier() -> None:
    chat = BRIDGE.to_chat(request(input="x", reasoning={"effort": "high"}, metadata={"a": "b"}))
    assert "reasoning_effort" not in chat and "metadata" not in chat


@pytest.mark.parametrize(
    "fields",
    [
        {"input": [{"type": "web_search_call", "id": "ws_1"}]},
        {"input": "x", "tools": [{"name": "untyped"}]},
        {"input": []},
        {"input": "x", "max_output_tokens": 0},
    ],
)
def test_unsupported_requests_are_refused_at_the_edge(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


def test_hosted_tools_are_left_out() -> None:
    given = request(input="x", tools=[TOOL, {"type": "web_search"}, {"type": "code_interpreter"}])
    assert given.ignored_tools() == ["web_search", "code_interpreter"]
    chat = BRIDGE.to_chat(given)
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["get_weather"]
    only_hosted = BRIDGE.to_chat(request(input="x", tools=[{"type": "web_search"}]))
    assert "tools" not in only_hosted and "tool_choice" not in only_hosted


def test_a_custom_tool_round_trips_as_a_function() -> None:
    custom = {"type": "custom", "name": "apply_patch", "description": "Apply a patch."}
    chat = BRIDGE.to_chat(request(input="x", tools=[custom]))
    assert chat["tools"][0]["type"] == "function"
    assert chat["tools"][0]["function"]["name"] == "apply_patch"
    arguments = '{"content": "*** Begin Patch"}'
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "apply_patch", "arguments": arguments},
    }
    answer = chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    body = BRIDGE.from_chat(request(input="x", tools=[custom]), answer, "resp_5")
    item = body["output"][-1]
    assert item["type"] == "custom_tool_call" and item["input"] == "*** Begin Patch"
    result = {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done"}
    again = BRIDGE.to_chat(request(input=[item, result], tools=[custom]))
    assert again["messages"][0]["tool_calls"][0]["function"]["name"] == "apply_patch"
    assert again["messages"][1] == {"role": "tool", "content": "Done", "tool_call_id": "c1"}


def test_malformed_items_are_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        BRIDGE.to_chat(request(input=[{"role": "user", "content": 5}]))
    assert caught.value.param == "input" and caught.value.status == 400


def test_an_answer_becomes_a_responses_object() -> None:
    answer = chat_answer({"role": "assistant", "content": "Paris.", "reasoning_content": "Easy."})
    body = BRIDGE.from_chat(request(input="Capital?", store=False), answer, "resp_1")
    assert body["id"] == "resp_1" and body["object"] == "response"
    assert body["status"] == "completed" and body["store"] is False
    assert body["model"] == "deepseek-v4-pro"
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Easy."}]
    assert message["content"][0]["text"] == "Paris."
    assert body["usage"]["input_tokens"] == 10 and body["usage"]["output_tokens"] == 6
    assert "cost" not in body["usage"]


def test_a_tool_call_answer_becomes_a_function_call_item() -> None:
    call = {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    answer = chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    body = BRIDGE.from_chat(request(input="x", tools=[TOOL]), answer, "resp_2")
    calls = [item for item in body["output"] if item["type"] == "function_call"]
    assert calls == [
        {
            "type": "function_call",
            "id": calls[0]["id"],
            "call_id": "c9",
            "name": "get_weather",
            "arguments": "{}",
            "status": "completed",
        }
    ]


def test_a_cut_answer_is_incomplete() -> None:
    answer = chat_answer({"role": "assistant", "content": "Par"}, "length")
    body = BRIDGE.from_chat(request(input="x", max_output_tokens=1), answer, "resp_3")
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


def test_the_conversation_is_history_input_and_output() -> None:
    given = request(input="two")
    output = [{"type": "message", "role": "assistant", "content": []}]
    turns = conversation(given, [{"role": "user", "content": "one"}], {"output": output})
    assert turns == [
        {"role": "user", "content": "one"},
        {"type": "message", "role": "user", "content": "two"},
        *output,
    ]


async def chunks(*deltas: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-v4-pro"}
    for delta in deltas:
        yield {**base, "choices": [{"index": 0, "delta": delta}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    yield {**base, "choices": [], "usage": usage}


async def test_chunks_become_responses_events() -> None:
    stream = chunks({"reasoning_content": "Think."}, {"content": "Hel"}, {"content": "lo"})
    events = BRIDGE.events(request(input="x", stream=True), stream, "resp_4", "deepseek-v4-pro")
    seen = [event async for event in events]
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert {e["response"]["id"] for e in seen if "response" in e} == {"resp_4"}
    summary = [e["delta"] for e in seen if e["type"] == "response.reasoning_summary_text.delta"]
    text = [e["delta"] for e in seen if e["type"] == "response.output_text.delta"]
    assert summary == ["Think."] and "".join(text) == "Hello"
    assert events.completed is not None and events.completed["usage"]["total_tokens"] == 7
    failure = events.failure("upstream_error", "gone", None)
    assert [e["type"] for e in failure] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in failure] == [len(seen), len(seen) + 1]
