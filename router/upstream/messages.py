"""The Anthropic Messages wire format toward DeepSeek's Anthropic API: the request body a tier
sends, and answers read back (whole messages, stream events, a stream assembled into a message
and a message replayed as events). Pure: the transport does the I/O.

DeepSeek's own semantics are kept: the tier's model id, `thinking` and `output_config.effort`
go upstream; thinking blocks and tool use come back as DeepSeek sent them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from router.errors import UpstreamError
from router.routing.cost import Usage
from router.routing.policy import Tier
from router.schemas_anthropic import MessagesRequest
from router.upstream.base import UpstreamCall

MESSAGES_PATH = "/v1/messages"
DEFAULT_ANTHROPIC_API_BASE = "https://api.deepseek.com/anthropic"
PROVIDER_PREFIX = "deepseek/"
EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
COMPLETE_STOPS = frozenset({"end_turn", "tool_use", "stop_sequence"})
# What DeepSeek accepts in place of a missing thinking block (it answers 400 when a tool-use
# turn comes back without one while thinking is on, e.g. after a turn served with thinking off).
EMPTY_THINKING: dict[str, str] = {"type": "thinking", "thinking": "", "signature": ""}


def messages_call(
    tier: Tier,
    request: MessagesRequest,
    api_base: str | None,
    api_key: str | None,
    user_id: str | None,
) -> UpstreamCall:
    """The call relaying a Messages body to `tier` in Anthropic format; `user_id` (the caller's
    tenant hash) goes as `metadata.user_id`, where DeepSeek's Anthropic API reads it."""
    fields = request.upstream_fields()
    if user_id is not None:
        fields["metadata"] = {"user_id": user_id}
    call = UpstreamCall.to_tier(tier, request.upstream_messages(), fields, api_base, api_key)
    return replace(call, api_base=api_base, wire="messages")


def messages_body(
    model: str,
    messages: list[dict[str, Any]],
    fields: Mapping[str, Any],
    thinking: str,
    effort: str | None,
    *,
    stream: bool,
) -> dict[str, Any]:
    """The JSON body DeepSeek's `/v1/messages` receives for one tier."""
    enabled = thinking == "enabled"
    body: dict[str, Any] = {
        "model": model.removeprefix(PROVIDER_PREFIX),
        "messages": [_with_thinking(m) for m in messages] if enabled else messages,
        **fields,
        "thinking": {"type": thinking},
    }
    if enabled and effort in EFFORTS:
        body["output_config"] = {"effort": effort}
    if stream:
        body["stream"] = True
    return body


def _with_thinking(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if message.get("role") != "assistant" or not isinstance(content, list):
        return message
    kinds = {block.get("type") for block in content if isinstance(block, dict)}
    if "tool_use" not in kinds or "thinking" in kinds:
        return message
    return {**message, "content": [EMPTY_THINKING, *content]}


def usage_of(usage: Mapping[str, Any] | None) -> Usage:
    """An Anthropic `usage` object as flashpro counts it: `input_tokens` are the uncached input,
    `cache_read_input_tokens` the prefix-cache hits (DeepSeek's disk cache), thinking is output."""
    if not usage:
        return Usage()
    hit = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(usage.get("input_tokens") or 0) + hit + written,
        completion_tokens=int(usage.get("output_tokens") or 0),
        cache_hit_tokens=hit,
    )


def is_complete(body: Mapping[str, Any]) -> bool:
    """The message ended normally (not cut by `max_tokens` or a refusal): worth caching."""
    return body.get("stop_reason") in COMPLETE_STOPS and bool(body.get("content"))


def parse_message(raw: bytes) -> dict[str, Any]:
    """A whole `message` body from the upstream."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream sent an answer that is not JSON.") from exc
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise UpstreamError("The upstream sent an answer without content.")
    return body


def parse_event(payload: bytes) -> dict[str, Any]:
    """One stream event's `data:`; an `error` event raises (nothing more will come)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise UpstreamError("The upstream sent a stream event without a type.")
    if data["type"] == "error":
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise UpstreamError(f"The upstream reported an error mid-stream: {message or 'unknown'}")
    return data


def event_usage(data: Mapping[str, Any]) -> Usage | None:
    """The usage a `message_delta` reports (cumulative: the whole answer's)."""
    if data.get("type") != "message_delta" or not isinstance(data.get("usage"), dict):
        return None
    return usage_of(data["usage"])


class MessageAssembler:
    """Accumulates stream events (message_start, content blocks, message_delta) into the
    message a non-streaming call would have returned."""

    def __init__(self) -> None:
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._usage: dict[str, Any] = {}
        self._reported = False
        self.finished = False

    def add(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._message = {k: v for k, v in message.items() if k not in ("content", "usage")}
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            self._blocks[int(data.get("index", 0))] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            self._delta(int(data.get("index", 0)), data.get("delta") or {})
        elif kind == "message_delta":
            self._message.update(data.get("delta") or {})
            self._usage.update(data.get("usage") or {})
            self._reported = True
        elif kind == "message_stop":
            self.finished = True

    def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta.get("partial_json", ""))

    def reported_usage(self) -> Usage | None:
        """The upstream's count of the whole answer, once its message_delta said it."""
        return usage_of(self._usage) if self._reported else None

    def produced_chars(self) -> tuple[int, int]:
        """(characters streamed so far, of which thinking): what a cut stream produced."""
        thinking = sum(len(b.get("thinking", "")) for b in self._blocks.values())
        text = sum(len(b.get("text", "")) for b in self._blocks.values())
        arguments = sum(len(part) for parts in self._json.values() for part in parts)
        return thinking + text + arguments, thinking

    def body(self) -> dict[str, Any]:
        """The assembled message; one whose tool input is not JSON has no stop reason (the
        client got the events as sent, but such an answer is not kept)."""
        content = []
        whole = True
        for index in sorted(self._blocks):
            block = dict(self._blocks[index])
            if block.get("type") == "tool_use" and index in self._json:
                try:
                    block["input"] = orjson.loads("".join(self._json[index]) or "{}")
                except orjson.JSONDecodeError:
                    whole = False
            content.append(block)
        body = {**self._message, "content": content, "usage": dict(self._usage)}
        if not whole:
            body["stop_reason"] = None
        return body


def events_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Replay a whole message as the events a stream of it would have sent."""
    usage = dict(body.get("usage") or {})
    start = {k: v for k, v in body.items() if k not in ("content", "usage")}
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**usage, "output_tokens": 0}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(body.get("content") or ()):
        events.extend(_block_events(index, block))
    delta = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
    events.append({"type": "message_delta", "delta": delta, "usage": usage})
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "thinking":
        opened: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        deltas.append({"type": "thinking_delta", "thinking": block.get("thinking", "")})
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        opened = {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}
        arguments = orjson.dumps(block.get("input") or {}).decode()
        deltas.append({"type": "input_json_delta", "partial_json": arguments})
    else:
        opened = {"type": "text", "text": ""}
        deltas.append({"type": "text_delta", "text": block.get("text", "")})
    return [
        {"type": "content_block_start", "index": index, "content_block": opened},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]
