"""Anthropic Messages wire models: parse `/v1/messages` bodies at the edge, hold them to what
DeepSeek's Anthropic API accepts, and give the pipeline its chat view of them. Pure.

DeepSeek's compatibility table (api-docs.deepseek.com/guides/anthropic_api) decides what happens
to each field: supported fields are relayed; ignored ones (`top_k`, `container`, `mcp_servers`,
`service_tier`, metadata other than `user_id`, `disable_parallel_tool_use`) are dropped here;
refused ones (image, document and redacted-thinking blocks...) are a 400 before anything is
called. Server tools (`web_search_*`, ...), which no tier runs, are left out and named, as agents
declare them in every request. `thinking` and `output_config` are the tier's to set.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from router.schemas import ChatRequest, ContentPart, Message, ToolCall, ToolCallFunction

# Content blocks DeepSeek's Anthropic API reads; any other type is refused (its table marks
# image, document, search_result, redacted_thinking and the server-tool blocks Not Supported).
SUPPORTED_BLOCKS = frozenset({"text", "thinking", "tool_use", "tool_result"})
# Request fields relayed toward DeepSeek; everything else is dropped (ignored upstream, or the
# tier's to set: model, thinking, output_config, stream).
RELAYED_FIELDS: tuple[str, ...] = (
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
)
_TOOL_FIELDS = ("name", "description", "input_schema")
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


class Block(BaseModel):
    """One content block (text, thinking, tool_use, tool_result); unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None

    @field_validator("type")
    @classmethod
    def _supported(cls, kind: str) -> str:
        if kind not in SUPPORTED_BLOCKS:
            raise ValueError(
                f"content blocks of type '{kind}' are not supported by DeepSeek's Anthropic API "
                f"(supported: {', '.join(sorted(SUPPORTED_BLOCKS))})"
            )
        return kind

    def plain(self) -> str:
        """The block's text as the classifier reads it (a tool result's text parts joined)."""
        if self.type == "text":
            return self.text or ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.plain() for part in self.content or ())


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[Block]

    def blocks(self) -> list[Block]:
        if isinstance(self.content, str):
            return [Block(type="text", text=self.content)]
        return self.content


class Tool(BaseModel):
    """A client tool: name, description and JSON schema (server tools are refused)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    def relayed(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _TOOL_FIELDS}
        return {name: value for name, value in out.items() if value is not None}


class ServerTool(BaseModel):
    """A tool the provider runs (`web_search_20250305`, `bash_20250124`...): none here."""

    model_config = ConfigDict(extra="allow")

    type: str
    name: str = ""


def _tool_kind(tool: Any) -> str:
    kind = tool.get("type") if isinstance(tool, dict) else getattr(tool, "type", None)
    return "client" if kind in (None, "custom") else "server"


AnyTool = Annotated[
    Annotated[Tool, Tag("client")] | Annotated[ServerTool, Tag("server")],
    Discriminator(_tool_kind),
]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None


class MessagesRequest(BaseModel):
    """A `/v1/messages` body. Unknown fields are accepted and never relayed."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # ignored by DeepSeek: dropped
    tools: list[AnyTool] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: Metadata | None = None
    thinking: dict[str, Any] | None = None  # the tier decides; accepted, not relayed
    output_config: dict[str, Any] | None = None  # likewise

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, choice: dict[str, Any] | None) -> dict[str, Any] | None:
        if choice is None:
            return None
        if choice.get("type") not in _TOOL_CHOICES:
            raise ValueError(f"type must be one of {', '.join(sorted(_TOOL_CHOICES))}")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise ValueError("a 'tool' choice needs the tool's 'name'")
        # DeepSeek ignores disable_parallel_tool_use; relay only what it reads
        return {k: v for k, v in choice.items() if k in ("type", "name")}

    def upstream_fields(self) -> dict[str, Any]:
        """The relayed fields the client set, as JSON-ready values (tier settings excluded)."""
        out: dict[str, Any] = {}
        for name in RELAYED_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "tools":
                value = [tool.relayed() for tool in self.client_tools()] or None
                if value is None:
                    continue
            elif name == "system" and not isinstance(value, str):
                value = [block.model_dump(exclude_none=True) for block in value]
            out[name] = value
        if self.metadata is not None and self.metadata.user_id is not None:
            out["metadata"] = {"user_id": self.metadata.user_id}
        choice = out.get("tool_choice")
        names = {tool.name for tool in self.client_tools()}
        if choice is not None and (not names or choice.get("name", next(iter(names))) not in names):
            del out["tool_choice"]  # it named a tool left out, or there is none left
        return out

    def client_tools(self) -> list[Tool]:
        return [tool for tool in self.tools or () if isinstance(tool, Tool)]

    def ignored_tools(self) -> list[str]:
        """The server tools the request declared (left out: no tier runs them)."""
        return [tool.name or tool.type for tool in self.tools or () if isinstance(tool, ServerTool)]

    def upstream_messages(self) -> list[dict[str, Any]]:
        return [message.model_dump(exclude_none=True) for message in self.messages]

    def digest(self) -> bytes:
        """What decides the answer, independent of key order and whitespace (the cache key's
        request part): messages and relayed fields, never `stream`, `model` or metadata."""
        fields = {k: v for k, v in self.upstream_fields().items() if k != "metadata"}
        canonical = orjson.dumps(
            ["anthropic-messages", self.upstream_messages(), fields], option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(canonical).digest()

    def system_text(self) -> str:
        if self.system is None:
            return ""
        if isinstance(self.system, str):
            return self.system
        return "\n".join(block.plain() for block in self.system)


class CountTokensRequest(MessagesRequest):
    """A `/v1/messages/count_tokens` body: a Messages body without `max_tokens`."""

    max_tokens: int = Field(default=1, ge=1)


def chat_view(request: MessagesRequest) -> ChatRequest:
    """The request as the pipeline reads it (classifier, policy rules, limits): system first,
    tool results as tool messages, tool uses as tool calls, thinking as reasoning. The last
    human turn stays the last `user` message, which the classifier weighs most."""
    messages: list[Message] = []
    if request.system is not None:
        messages.append(Message(role="system", content=request.system_text()))
    for message in request.messages:
        if isinstance(message.content, str):  # plain text, the common case: no blocks to build
            messages.append(Message(role=message.role, content=message.content))
        elif message.role == "user":
            messages.extend(_user_turn(message.blocks()))
        else:
            messages.append(_assistant_turn(message.blocks()))
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description or "",
                "parameters": tool.input_schema,
            },
        }
        for tool in request.client_tools()
    ]
    return ChatRequest(
        model=request.model,
        messages=messages,
        stream=request.stream,
        tools=tools or None,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop_sequences,
    )


def _user_turn(blocks: list[Block]) -> list[Message]:
    results = [
        Message(role="tool", tool_call_id=block.tool_use_id or "", content=block.plain())
        for block in blocks
        if block.type == "tool_result"
    ]
    texts = [b.text for b in blocks if b.type == "text" and b.text]
    if not texts:
        return results
    content = texts[0] if len(texts) == 1 else [ContentPart(type="text", text=t) for t in texts]
    return [*results, Message(role="user", content=content)]


def _assistant_turn(blocks: list[Block]) -> Message:
    text = "".join(block.text or "" for block in blocks if block.type == "text")
    reasoning = "".join(block.thinking or "" for block in blocks if block.type == "thinking")
    calls = [
        ToolCall(
            id=block.id or "",
            function=ToolCallFunction(
                name=block.name or "", arguments=orjson.dumps(block.input or {}).decode()
            ),
        )
        for block in blocks
        if block.type == "tool_use"
    ]
    return Message(
        role="assistant",
        content=text,
        tool_calls=calls or None,
        reasoning_content=reasoning or None,
    )


def estimate_input_tokens(request: MessagesRequest) -> int:
    """About four characters a token over everything the model reads, plus a few tokens of
    framing per message (flashpro's estimate; DeepSeek's tokenizer is not at hand)."""
    chars = len(request.system_text())
    for message in request.messages:
        for block in message.blocks():
            chars += len(block.plain()) + len(block.thinking or "")
            if block.type == "tool_use":
                chars += len(block.name or "") + len(orjson.dumps(block.input or {}))
    if request.tools:
        chars += len(orjson.dumps([tool.relayed() for tool in request.client_tools()]))
    return chars // 4 + 4 * len(request.messages) + 1
