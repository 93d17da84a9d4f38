"""The simulated DeepSeek's Anthropic-format API (`/anthropic/v1/messages`): requests checked as
DeepSeek's compatibility table says, answers shaped as Anthropic messages and stream events.
Pure: `router/simulator/server.py` serves it.

The answer itself comes from the same model as the chat format (`router/simulator/text.py`), so
one conversation gets the same reasoning, text and tool calls in either format.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from router.simulator.faults import SimError, markers_in
from router.simulator.text import (
    CHARS_PER_TOKEN,
    EFFORTS,
    ChatMessage,
    ChatRequest,
    Choice,
    Tool,
    ToolCall,
    count_tokens,
)

MESSAGES_PATHS: Final = frozenset({"/anthropic/v1/messages", "/anthropic/messages"})
# Block types DeepSeek's table marks supported; the rest (image, document, redacted_thinking,
# server tool blocks...) are refused.
_BLOCKS: Final = frozenset({"text", "thinking", "tool_use", "tool_result"})
_MAX_OUTPUT_TOKENS: Final = 393_216
_STOPS: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
}
_KINDS: Final[Mapping[int, str]] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
THINKING_NOT_PASSED_BACK: Final = (
    "The `content[].thinking` in the thinking mode must be passed back to the API."
)


def error_envelope(error: SimError) -> dict[str, object]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    kind = _KINDS.get(error.status)
    kind = kind or ("invalid_request_error" if error.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def upstream_model(name: str, known: Sequence[str]) -> str:
    """DeepSeek's model mapping: its own ids, `claude-opus*` to Pro, other `claude*` to Flash."""
    if name in known:
        return name
    if name.startswith("claude-opus"):
        return "deepseek-v4-pro"
    if name.startswith("claude"):
        return "deepseek-flash"
    raise SimError(400, f"Model Not Exist: {name}")


@dataclass(frozen=True, slots=True)
class MessagesCall:
    """A parsed Anthropic request: the chat model's view of it and what shapes the reply."""

    request: ChatRequest
    thinking_blocks_missing: bool  # a tool-use turn without a thinking block


def parse_messages_request(body: object, known: Sequence[str]) -> MessagesCall:
    """Validate a `/v1/messages` body the way DeepSeek does: 400 for what it refuses."""
    if not isinstance(body, dict):
        raise SimError(400, "Failed to parse the request body as a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise SimError(400, "model: Field required")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise SimError(400, "messages: at least one message is required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise SimError(400, "max_tokens: Field required")
    if not 1 <= max_tokens <= _MAX_OUTPUT_TOKENS:
        raise SimError(400, f"max_tokens: must be in [1, {_MAX_OUTPUT_TOKENS}]")
    messages: list[ChatMessage] = []
    if (system := body.get("system")) is not None:
        messages.append(_message("system", "", _blocks(system, "system")))
    missing = False
    for raw in raw_messages:
        role = raw.get("role") if isinstance(raw, dict) else None
        if role not in ("user", "assistant"):
            raise SimError(400, "messages: role must be 'user' or 'assistant'")
        blocks = _blocks(raw.get("content"), "messages.content")
        kinds = {block["type"] for block in blocks}
        missing = missing or (
            role == "assistant" and "tool_use" in kinds and "thinking" not in kinds
        )
        messages.extend(_turn(role, blocks))
    tools = _tools(body.get("tools"))
    thinking = _thinking(body.get("thinking"))
    effort = _effort(body.get("output_config"))
    request = ChatRequest(
        model=upstream_model(model, known),
        messages=tuple(messages),
        stream=body.get("stream") is True,
        include_usage=True,
        thinking=thinking,
        effort=effort,
        max_tokens=max_tokens,
        n=1,
        tools=tools,
        tool=_tool_choice(body.get("tool_choice"), tools),
        json_mode=False,
        fingerprint=hashlib.blake2b(
            orjson.dumps(
                [model, raw_messages, system, [body.get(k) for k in ("temperature", "top_p")]],
                option=orjson.OPT_SORT_KEYS,
            ),
            digest_size=16,
        ).digest(),
        fault=_markers(messages),
    )
    return MessagesCall(request, missing)


def _markers(messages: Sequence[ChatMessage]) -> Any:
    """`[[sim:...]]` fault markers in the last user message, as on the chat format."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return markers_in(last_user.text) if last_user is not None else markers_in("")


def _blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise SimError(400, f"{where}: expected a string or a list of content blocks")
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCKS:
            raise SimError(400, f"{where}: content block type {kind!r} is not supported")
    return content


def _text(blocks: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for block in blocks:
        if block["type"] == "text":
            parts.append(str(block.get("text", "")))
        elif block["type"] == "tool_result":
            inner = block.get("content")
            parts.append(
                inner if isinstance(inner, str) else _text(_blocks(inner or [], "tool_result"))
            )
    return "\n".join(parts)


def _message(role: str, call_id: str, blocks: Sequence[Mapping[str, Any]]) -> ChatMessage:
    calls = tuple(
        ToolCall(
            str(b.get("id", "")),
            str(b.get("name", "")),
            orjson.dumps(b.get("input") or {}).decode(),
        )
        for b in blocks
        if b["type"] == "tool_use"
    )
    thoughts = [str(b.get("thinking", "")) for b in blocks if b["type"] == "thinking"]
    return ChatMessage(
        role, _text(blocks), calls, "".join(thoughts) if thoughts else None, call_id or None
    )


def _turn(role: str, blocks: list[dict[str, Any]]) -> list[ChatMessage]:
    """A user turn's tool results become tool messages (so the model answers them)."""
    if role == "assistant":
        return [_message("assistant", "", blocks)]
    results = [b for b in blocks if b["type"] == "tool_result"]
    rest = [b for b in blocks if b["type"] != "tool_result"]
    out = [_message("tool", str(b.get("tool_use_id", "")), [b]) for b in results]
    return [*out, _message("user", "", rest)] if rest or not out else out


def _tools(raw: object) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SimError(400, "tools: expected a list")
    tools = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SimError(400, "tools: each tool needs a name")
        schema = item.get("input_schema")
        if not isinstance(schema, dict):
            raise SimError(400, f"tools.{item['name']}: input_schema is required")
        tools.append(Tool(item["name"], schema))
    return tuple(tools)


def _tool_choice(raw: object, tools: Sequence[Tool]) -> Tool | None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if raw is None or kind in ("auto", "any"):
        return tools[0] if tools else None
    if kind == "none":
        return None
    name = raw.get("name") if isinstance(raw, dict) and kind == "tool" else None
    chosen = next((t for t in tools if t.name == name), None)
    if chosen is None:
        raise SimError(400, f"tool_choice: invalid tool choice {raw!r}")
    return chosen


def _thinking(raw: object) -> bool | None:
    kind = raw.get("type") if isinstance(raw, dict) else raw
    if kind not in (None, "enabled", "disabled"):
        raise SimError(400, "thinking.type: must be 'enabled' or 'disabled'")
    return None if kind is None else kind == "enabled"


def _effort(raw: object) -> Any:
    effort = raw.get("effort") if isinstance(raw, dict) else None
    if effort is not None and effort not in EFFORTS:
        raise SimError(400, f"output_config.effort: invalid value {effort!r}")
    return "high" if effort is None else EFFORTS[effort]


def usage_json(prompt_tokens: int, hit: int, choice: Choice) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` are the uncached input, hits are cache reads."""
    return {
        "input_tokens": prompt_tokens - hit,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": hit,
        "output_tokens": choice.completion_tokens(),
    }


def _signature(thinking: str) -> str:
    return hashlib.blake2b(thinking.encode(), digest_size=24).hexdigest()


def content_blocks(choice: Choice) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if choice.reasoning is not None:
        signature = _signature(choice.reasoning)
        blocks.append({"type": "thinking", "thinking": choice.reasoning, "signature": signature})
    if choice.content:
        blocks.append({"type": "text", "text": choice.content})
    if (call := choice.tool_call) is not None:
        arguments = orjson.loads(call.arguments)
        blocks.append(
            {"type": "tool_use", "id": _tool_id(call), "name": call.name, "input": arguments}
        )
    return blocks


def _tool_id(call: ToolCall) -> str:
    return "toolu_" + call.id.removeprefix("call_00_")


def _head(model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
    }


def message_json(model: str, choice: Choice, usage: Mapping[str, int]) -> bytes:
    """A non-streaming `message` body."""
    body = _head(model)
    body.update(
        content=content_blocks(choice),
        stop_reason=_STOPS[choice.finish_reason],
        stop_sequence=None,
        usage=usage,
    )
    return orjson.dumps(body)


def _event(data: Mapping[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_events(
    model: str, choice: Choice, usage: Mapping[str, int], chunk_tokens: int
) -> Iterator[tuple[bytes, int]]:
    """(SSE event, tokens it carries) for one answer, as DeepSeek streams the Anthropic format:
    message_start, ping, each block's start/deltas/stop, message_delta with usage, message_stop."""
    size = chunk_tokens * CHARS_PER_TOKEN
    start = {**_head(model), "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 0}
    yield _event({"type": "message_start", "message": start}), 0
    yield _event({"type": "ping"}), 0
    for index, block in enumerate(content_blocks(choice)):
        yield from _block_events(index, block, size)
    delta = {"stop_reason": _STOPS[choice.finish_reason], "stop_sequence": None}
    final = {"output_tokens": usage["output_tokens"]}
    yield _event({"type": "message_delta", "delta": delta, "usage": final}), 0
    yield _event({"type": "message_stop"}), 0


def _block_events(index: int, block: Mapping[str, Any], size: int) -> Iterator[tuple[bytes, int]]:
    kind = block["type"]
    if kind == "thinking":
        opened: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        field, delta_type, text = "thinking", "thinking_delta", block["thinking"]
    elif kind == "tool_use":
        opened = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        field, delta_type = "partial_json", "input_json_delta"
        text = orjson.dumps(block["input"]).decode()
    else:
        opened = {"type": "text", "text": ""}
        field, delta_type, text = "text", "text_delta", block["text"]
    yield _event({"type": "content_block_start", "index": index, "content_block": opened}), 0
    for i in range(0, len(text), size):
        part = text[i : i + size]
        delta = {"type": delta_type, field: part}
        yield (
            _event({"type": "content_block_delta", "index": index, "delta": delta}),
            count_tokens(part),
        )
    if kind == "thinking":
        signature = {"type": "signature_delta", "signature": block["signature"]}
        yield _event({"type": "content_block_delta", "index": index, "delta": signature}), 0
    yield _event({"type": "content_block_stop", "index": index}), 0
