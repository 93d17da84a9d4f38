"""The simulated DeepSeek model: parse a request and derive its answer. Pure: no I/O.

`router/simulator/server.py` serves this over HTTP, shaped by `router/simulator/wire.py`.
Answers are a function of the request body, so the same request always gets the same answer,
reasoning, tool call and token counts (ids and timestamps aside).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

from router.simulator.faults import FaultSpec, SimError, markers_in

Effort = Literal["low", "high", "max"]

# DeepSeek's mapping of requested effort to the tiers it serves (see notes/deepseek-api.md).
EFFORTS: Final[Mapping[str, Effort]] = MappingProxyType(
    dict(minimal="low", low="low", medium="high", high="high", xhigh="high", max="max", ultra="max")
)
_REASONING_SCALE: Final[Mapping[Effort, float]] = MappingProxyType(
    {"low": 0.3, "high": 1.0, "max": 3.0}
)
_ROLES: Final = ("system", "user", "assistant", "tool")  # DeepSeek refuses `developer`, `function`
_IMAGE_PARTS: Final = frozenset({"image_url", "image"})
_USER_ID: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_USER_ID_BYTES: Final = 512
_MAX_OUTPUT_TOKENS: Final = 393_216
_MAX_CHOICES: Final = 16
CHARS_PER_TOKEN: Final = 4
_MESSAGE_OVERHEAD_TOKENS: Final = 4
_PROSE: Final = """the a model router request token cache prefix latency answer question system user value
    result step first then next because therefore however data query pipeline budget policy stream
    chunk server client context reason check number list table function call simple clear fast slow
    cheap strong weak small large short long early late open closed count measure compare choose
    keep drop send receive build parse route score rank sort search store load read write plan test
    run fix update merge split join map filter reduce and or but with without for from into over
    under about between across after before"""
_WORDS: Final = tuple(_PROSE.split())


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    text: str
    tool_calls: tuple[ToolCall, ...]
    reasoning_content: str | None
    tool_call_id: str | None
    images: int = 0  # image parts in the content

    def tokens(self) -> int:
        calls = sum(count_tokens(c.name) + count_tokens(c.arguments) for c in self.tool_calls)
        return _MESSAGE_OVERHEAD_TOKENS + count_tokens(self.text) + calls

    def canonical(self) -> bytes:
        """What the prefix cache sees: reasoning and tool-call ids do not change the prefix."""
        calls = [(c.name, c.arguments) for c in self.tool_calls]
        return orjson.dumps([self.role, self.text, calls, self.tool_call_id is not None])


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    parameters: Mapping[str, Any]  # the client's JSON schema, relayed as sent


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The fields of a chat-completions body the simulator acts on."""

    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool
    include_usage: bool
    thinking: bool | None  # None = the model's default
    effort: Effort
    max_tokens: int | None
    n: int
    tools: tuple[Tool, ...]
    tool: Tool | None  # the function a tool call would use; None when tool_choice is "none"
    json_mode: bool
    fingerprint: bytes  # hash of everything that shapes the answer
    fault: FaultSpec
    user_id: str | None = None

    def first_image(self) -> int | None:
        """The index of the first message with an image part, if any."""
        return next((i for i, m in enumerate(self.messages) if m.images), None)

    def prefixes(self) -> list[tuple[bytes, int]]:
        """(digest, tokens) of every prompt prefix, shortest first; the last is the whole prompt.

        Digests chain from the model id, the user_id and the tools, so another model or user
        never shares a prefix.
        """
        tools = orjson.dumps([(t.name, t.parameters) for t in self.tools])
        # DeepSeek isolates its KV cache per user_id: another user never shares a prefix
        scope = f"{self.model}\0{self.user_id or ''}\0".encode()
        digest = _digest(scope + tools)
        tokens = count_tokens(tools) if self.tools else 0
        out = [(digest, tokens)]
        for message in self.messages:
            digest = _digest(digest + message.canonical())
            tokens += message.tokens()
            out.append((digest, tokens))
        return out

    def tool_to_call(self) -> Tool | None:
        """DeepSeek calls a tool when the user spoke last; after a tool result it answers."""
        return self.tool if self.messages[-1].role == "user" else None


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated answer."""

    reasoning: str | None
    content: str
    tool_call: ToolCall | None
    finish_reason: str

    def reasoning_tokens(self) -> int:
        return count_tokens(self.reasoning) if self.reasoning else 0

    def completion_tokens(self) -> int:
        call = self.tool_call
        calls = count_tokens(call.name) + count_tokens(call.arguments) if call else 0
        return self.reasoning_tokens() + count_tokens(self.content) + calls


def count_tokens(text: str | bytes) -> int:
    """Approximate tokens: about four characters each."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def output_digest(prefix_digest: bytes, choice: Choice) -> bytes:
    """The cache unit persisted at the end of the output (prompt + answer)."""
    calls = (choice.tool_call,) if choice.tool_call else ()
    message = ChatMessage("assistant", choice.content, calls, choice.reasoning, None)
    return _digest(prefix_digest + message.canonical())


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a chat-completions body the way DeepSeek does: 422 for shape, 400 for values."""
    if not isinstance(body, dict):
        raise SimError(422, "Failed to deserialize the JSON body into the target type")
    model = body.get("model")
    if not isinstance(model, str):
        raise SimError(422, "Failed to deserialize the JSON body: missing field `model`")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise SimError(422, "Failed to deserialize the JSON body: missing field `messages`")
    if not raw_messages:
        raise SimError(400, "Invalid request: messages must not be empty")
    messages = tuple(_parse_message(m, i) for i, m in enumerate(raw_messages))
    tools = _parse_tools(body.get("tools"))
    json_mode = _parse_json_mode(body.get("response_format"))
    if json_mode and not any(
        m.role in ("system", "user") and "json" in m.text.lower() for m in messages
    ):
        raise SimError(
            400,
            "Prompt must contain the word 'json' in some form to use 'response_format' of type "
            "'json_object'.",
        )
    max_tokens = body.get("max_tokens")  # DeepSeek ignores `max_completion_tokens`
    return ChatRequest(
        model=model,
        messages=messages,
        stream=body.get("stream") is True,
        include_usage=isinstance(opts := body.get("stream_options"), dict)
        and opts.get("include_usage") is True,
        thinking=_parse_thinking(body.get("thinking")),
        effort=_parse_effort(body.get("reasoning_effort")),
        max_tokens=_bounded_int(max_tokens, "max_tokens", _MAX_OUTPUT_TOKENS),
        n=_bounded_int(body.get("n"), "n", _MAX_CHOICES) or 1,
        tools=tools,
        tool=_parse_tool_choice(body.get("tool_choice"), tools),
        json_mode=json_mode,
        fingerprint=_digest(
            orjson.dumps(
                [model, raw_messages, [body.get(k) for k in ("seed", "temperature", "top_p")]],
                option=orjson.OPT_SORT_KEYS,
            )
        ),
        fault=_markers(messages),
        user_id=_parse_user_id(body.get("user_id")),
    )


def check_reasoning_passed_back(messages: Sequence[ChatMessage]) -> None:
    """DeepSeek's thinking-mode rule for turns that made tool calls."""
    if any(m.role == "assistant" and m.tool_calls and not m.reasoning_content for m in messages):
        message = "The reasoning_content in the thinking mode must be passed back to the API."
        raise SimError(400, message)


def generate_choices(
    request: ChatRequest, *, thinking: bool, max_output_tokens: int
) -> tuple[Choice, ...]:
    """The answers to a request: same request, same answers."""
    return tuple(
        _generate_choice(request, index, thinking, max_output_tokens) for index in range(request.n)
    )


def _generate_choice(
    request: ChatRequest, index: int, thinking: bool, max_output_tokens: int
) -> Choice:
    # Separate streams, so thinking and effort change the reasoning but never the answer.
    seed = request.fingerprint + index.to_bytes(2, "big")
    rng = random.Random(seed + b"answer")
    reasoning = None
    if thinking:
        thought = random.Random(seed + b"reasoning")
        tokens = round(thought.randint(30, 180) * _REASONING_SCALE[request.effort])
        reasoning = "Let me think. " + _sentences(thought, tokens)
    content_tokens = rng.randint(min(12, max_output_tokens), max_output_tokens)
    if (tool := request.tool_to_call()) is not None:
        call_id = f"call_00_{rng.getrandbits(96):024x}"
        call = ToolCall(call_id, tool.name, _arguments(rng, tool.parameters))
        return truncated(reasoning, "", call, request.max_tokens)
    content = (
        _json_content(rng, content_tokens) if request.json_mode else _sentences(rng, content_tokens)
    )
    return truncated(reasoning, content, None, request.max_tokens)


def truncated(
    reasoning: str | None, content: str, call: ToolCall | None, budget: int | None
) -> Choice:
    """Cut the output at `max_tokens`, which (as on DeepSeek) also counts reasoning tokens."""
    finish = "tool_calls" if call else "stop"
    if budget is None:
        return Choice(reasoning, content, call, finish)
    if reasoning and count_tokens(reasoning) >= budget:
        return Choice(reasoning[: budget * CHARS_PER_TOKEN], "", None, "length")
    left = budget - (count_tokens(reasoning) if reasoning else 0)
    if count_tokens(content) > left:
        return Choice(reasoning, content[: left * CHARS_PER_TOKEN], None, "length")
    return Choice(reasoning, content, call, finish)


def _sentences(rng: random.Random, tokens: int) -> str:
    """Whole pseudo-sentences adding up to about `tokens` tokens."""
    target, bank = tokens * CHARS_PER_TOKEN, _sentence_bank()
    parts: list[str] = []
    size = 0
    while size < target:
        batch = rng.choices(bank, k=1 + (target - size) // 64)
        parts += batch
        size += sum(map(len, batch)) + len(batch)
    return " ".join(parts)


@functools.cache
def _sentence_bank() -> tuple[str, ...]:
    """256 fixed sentences: picking whole sentences keeps generation cheap per request."""
    rng = random.Random(0)
    return tuple(
        " ".join(rng.choices(_WORDS, k=rng.randint(5, 14))).capitalize() + "." for _ in range(256)
    )


def _json_content(rng: random.Random, tokens: int) -> str:
    points = [_sentences(rng, 12) for _ in range(max(1, tokens // 16))]
    payload = {"answer": _sentences(rng, 10), "confidence": rng.randint(50, 99) / 100}
    return orjson.dumps({**payload, "points": points}).decode()


def _arguments(rng: random.Random, parameters: Mapping[str, Any]) -> str:
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        return "{}"
    values = {name: _value(rng, spec) for name, spec in properties.items()}
    return orjson.dumps(values).decode()


def _value(rng: random.Random, spec: object) -> object:
    """A plausible value for one JSON-schema property."""
    spec = spec if isinstance(spec, dict) else {}
    if isinstance(enum := spec.get("enum"), list) and enum:
        return enum[0]
    kind = spec.get("type")
    if kind in ("integer", "number"):
        return rng.randint(1, 100)
    typed: dict[object, object] = {"boolean": True, "array": [], "object": {}}
    return typed.get(kind, rng.choice(_WORDS)) if isinstance(kind, str) else rng.choice(_WORDS)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _parse_message(raw: object, index: int) -> ChatMessage:
    if not isinstance(raw, dict):
        raise SimError(422, f"Failed to deserialize the JSON body: messages[{index}]")
    role = raw.get("role")
    if role not in _ROLES:
        expected = ", ".join(f"`{r}`" for r in _ROLES)
        raise SimError(
            400,
            "Failed to deserialize the JSON body into the target type: "
            f"messages[{index}].role: unknown variant `{role}`, expected one of {expected}",
        )
    reasoning = raw.get("reasoning_content")
    tool_call_id = raw.get("tool_call_id")
    content = raw.get("content")
    return ChatMessage(
        role=role,
        text=_text(content),
        tool_calls=tuple(_parse_tool_call(c) for c in raw.get("tool_calls") or ()),
        reasoning_content=reasoning if isinstance(reasoning, str) else None,
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
        images=_images(content),
    )


def _images(content: object) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") in _IMAGE_PARTS)


def check_images(request: ChatRequest, vision: bool) -> None:
    """A model without vision reads text parts only, and says so the way DeepSeek does."""
    index = request.first_image()
    if index is not None and not vision:
        raise SimError(
            400,
            "Failed to deserialize the JSON body into the target type: "
            f"messages[{index}]: unknown variant `image_url`, expected `text`",
        )


def _parse_user_id(raw: object) -> str | None:
    """DeepSeek's `user_id`: letters, digits, `_` and `-`, at most 512 bytes."""
    if raw is None:
        return None
    if (
        not isinstance(raw, str)
        or not _USER_ID.match(raw)
        or len(raw.encode()) > _MAX_USER_ID_BYTES
    ):
        raise SimError(400, "Invalid user_id: use [a-zA-Z0-9_-], at most 512 bytes")
    return raw


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(t for t in texts if isinstance(t, str))
    if content is None:
        return ""
    raise SimError(422, "Failed to deserialize the JSON body: invalid message content")


def _parse_tool_call(raw: object) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(function, dict):
        raise SimError(422, "Failed to deserialize the JSON body: invalid tool_calls")
    return ToolCall(
        id=str(raw.get("id", "")),
        name=str(function.get("name", "")),
        arguments=str(function.get("arguments", "")),
    )


def _parse_tools(raw: object) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SimError(422, "Failed to deserialize the JSON body: invalid tools")
    tools = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise SimError(422, "Failed to deserialize the JSON body: invalid tools")
        parameters = function.get("parameters")
        tools.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _parse_tool_choice(raw: object, tools: Sequence[Tool]) -> Tool | None:
    """The tool a call would use: the named one, else the first; None for "none" or no tools."""
    if raw == "none":
        return None
    if raw in (None, "auto", "required"):
        return tools[0] if tools else None
    function = raw.get("function") if isinstance(raw, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise SimError(422, "Failed to deserialize the JSON body: invalid tool_choice")
    chosen = next((t for t in tools if t.name == name), None)
    if chosen is None:
        raise SimError(400, f"Invalid tool_choice: function `{name}` is not in tools")
    return chosen


def _parse_thinking(raw: object) -> bool | None:
    kind = raw.get("type") if isinstance(raw, dict) else raw
    if kind not in (None, "enabled", "disabled"):
        raise SimError(
            422, "Failed to deserialize the JSON body: thinking.type must be enabled or disabled"
        )
    return None if kind is None else kind == "enabled"


def _parse_effort(raw: object) -> Effort:
    if raw is not None and (not isinstance(raw, str) or raw not in EFFORTS):
        raise SimError(
            400, f"Invalid reasoning_effort {raw!r}; expected one of {', '.join(EFFORTS)}"
        )
    return "high" if raw is None else EFFORTS[raw]


def _bounded_int(raw: object, name: str, high: int) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= high:
        raise SimError(400, f"Invalid {name} value, the valid range of {name} is [1, {high}]")
    return raw


def _parse_json_mode(raw: object) -> bool:
    kind = raw.get("type") if isinstance(raw, dict) else raw
    if kind in (None, "text"):
        return False
    if kind == "json_object":
        return True
    raise SimError(400, "This response_format type is unavailable now")


def _markers(messages: Sequence[ChatMessage]) -> FaultSpec:
    """`[[sim:key=value]]` markers in the last user message, so they pass through any proxy."""
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return FaultSpec() if last_user is None else markers_in(last_user.text)


def check_context(request: ChatRequest, prompt_tokens: int, limit: int) -> None:
    """DeepSeek's context-length 400, worded so litellm maps it to ContextWindowExceededError."""
    completion = request.max_tokens or 0
    if prompt_tokens + completion > limit:
        raise SimError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + completion} tokens ({prompt_tokens} in the messages, {completion} "
            "in the completion). Please reduce the length of the messages or completion.",
        )
