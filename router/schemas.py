"""OpenAI wire models: parse requests at the edge, typed for the fields flashpro reads. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

T = TypeVar("T")

IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})  # content parts that are images
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

# Request fields relayed to the upstream. Everything else a client sends is dropped here, so no
# client can reach litellm's transport settings (api_base, api_key, headers, ...).
UPSTREAM_FIELDS: tuple[str, ...] = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)


class ContentPart(BaseModel):
    """One part of a multi-part message content (text, image_url, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: str = "function"
    function: ToolCallFunction


class Message(BaseModel):
    """A chat message; unknown fields are kept and relayed."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        """The message's text, parts joined by newlines; non-text parts contribute nothing."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """A `/v1/chat/completions` body. Unknown fields are accepted but never relayed."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    _derived: dict[str, Any] = PrivateAttr(default_factory=dict)

    def derived(self, name: str, derive: Callable[[ChatRequest], T], owner: object = None) -> T:
        """`derive(self)`, computed once per request object and `owner` (the classifier or policy
        the value depends on; another owner recomputes it). Requests are never mutated, and
        router/http/chat.py hands one parsed object to every identical body it sees."""
        memo: dict[str, tuple[object, Any]] = self.__pydantic_private__["_derived"]  # type: ignore[index]
        slot = memo.get(name)
        if slot is None or slot[0] is not owner:
            slot = memo[name] = (owner, derive(self))
        return cast(T, slot[1])

    @field_validator("tools")
    @classmethod
    def _tools_are_objects(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools is not None:
            for tool in tools:
                if "type" not in tool:
                    raise ValueError("each tool needs a 'type'")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(choice, str) and choice not in ("none", "auto", "required"):
            raise ValueError("a string tool_choice is 'none', 'auto' or 'required'")
        if isinstance(choice, dict) and ("function" in choice or choice.get("type") == "function"):
            function = choice.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError("tool_choice.function must be an object with a string 'name'")
        return choice

    def upstream_params(self) -> dict[str, Any]:
        """The allowlisted optional parameters the client set, ready for the upstream call."""
        out: dict[str, Any] = {}
        for name in UPSTREAM_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def has_images(self) -> bool:
        """Whether a message carries an image part."""
        return any(
            isinstance(m.content, list) and any(p.type in IMAGE_PARTS for p in m.content)
            for m in self.messages
        )

    def wants_json(self) -> bool:
        fmt = self.response_format
        return fmt is not None and fmt.get("type") in ("json_object", "json_schema")

    def output_limit(self) -> int | None:
        """The output cap DeepSeek applies: the smaller of `max_tokens` and
        `max_completion_tokens` (sent as `max_tokens`, router/upstream/shaping.py)."""
        given = [n for n in (self.max_tokens, self.max_completion_tokens) if n is not None]
        return min(given) if given else None

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage
