"""Translate the OpenAI Responses format to chat completions and back, with litellm's
Responses<->Chat bridge. Pure: no I/O (the streamed events are produced from the chat chunks the
pipeline hands over).

`/v1/responses` is an adapter over the chat pipeline: a request becomes a chat body (the earlier
turns a `previous_response_id` names first), the pipeline routes and answers it like any chat
request, and the chat answer (or its chunks) becomes a Responses object (or its events). The
translation itself is litellm's (`litellm.responses.litellm_completion_transformation`); this
module picks what of it reaches the pipeline, and shapes the edges it leaves to the caller:
response ids, reasoning items, usage.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import orjson
from litellm.exceptions import BadRequestError
from litellm.responses.litellm_completion_transformation.streaming_iterator import (
    LiteLLMCompletionStreamingIterator,
)
from litellm.responses.litellm_completion_transformation.transformation import (
    LiteLLMCompletionResponsesConfig,
)
from litellm.types.llms.openai import ResponsesAPIOptionalRequestParams
from litellm.types.utils import ModelResponseStream
from openai.types.responses import ResponseInputParam
from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.errors import InvalidRequest

Config = LiteLLMCompletionResponsesConfig

# What of litellm's chat request reaches the pipeline (router/schemas.py allowlists it again
# toward the upstream). `reasoning_effort` is not among them: as for chat, the tier decides.
_CHAT_FIELDS = (
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "max_tokens",
    "response_format",
    "user",
)
# Request fields echoed on the Responses object.
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
)
_ITEM_TYPES = frozenset(
    (
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
    )
)
_TOOL_TYPES = frozenset({"function", "custom"})  # custom tools reach DeepSeek as functions
_PROVIDER = "deepseek"


class ResponsesRequest(BaseModel):
    """A `POST /v1/responses` body: the fields flashpro reads, typed; others accepted and
    ignored (`include`, `truncation`, `background`, ...)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    store: bool = True
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _known_items(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list):
            for index, item in enumerate(value):
                kind = item.get("type", "message" if "role" in item else None)
                if kind not in _ITEM_TYPES:
                    raise ValueError(f"input[{index}]: unsupported item type {kind!r}")
        return value

    @field_validator("tools")
    @classmethod
    def _typed_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, tool in enumerate(tools or ()):
            if not isinstance(tool.get("type"), str):
                raise ValueError(f"tools[{index}]: each tool needs a 'type'")
        return tools

    def ignored_tools(self) -> list[str]:
        """The hosted tools declared (`web_search`, `file_search`, ...): DeepSeek's chat API runs
        none, so they are left out. Agents such as Codex declare some in every request, so
        refusing them would refuse the agent."""
        return [t["type"] for t in self.tools or () if t["type"] not in _TOOL_TYPES]

    def items(self) -> list[dict[str, Any]]:
        """The input as a list of items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input

    def bridged(self) -> dict[str, Any]:
        """The optional parameters, as litellm's bridge reads them (hosted tools left out)."""
        params = self.model_dump(include=set(_ECHOED), exclude_none=True)
        if self.tools is not None:
            params["tools"] = [t for t in self.tools if t["type"] in _TOOL_TYPES]
        return params


class ResponsesBridge:
    """litellm's translation, set up once (built with the app's dependencies)."""

    def __init__(self) -> None:
        litellm.suppress_debug_info = True  # its stream assembly prints provider hints otherwise
        self._warm_up()

    def _warm_up(self) -> None:
        """Translate one tiny answer, whole and streamed, so litellm builds its validators now
        rather than during the first request (pydantic warns once about their read-only
        fields while it builds them: harmless, and not the operator's concern)."""
        request = ResponsesRequest(model="warm-up", input="hi", stream=True)
        chunk = {"id": "warm", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        done = {"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        answer = {
            **chunk,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": usage,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.from_chat(request, answer, "resp_warm_up")
            events = LiteLLMCompletionStreamingIterator(
                model="m",
                litellm_custom_stream_wrapper=_Replay([{**chunk, "choices": [done]}]),
                request_input=_input(request.items()),
                responses_api_request=_params(request),
                custom_llm_provider=_PROVIDER,
            )
            for _ in events:
                pass

    def to_chat(
        self, request: ResponsesRequest, history: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The chat completions body for a Responses request, the stored earlier turns first."""
        try:
            chat = Config.transform_responses_api_request_to_chat_completion_request(
                model=request.model,
                input=_input([*history, *request.items()]),
                responses_api_request=_params(request),
                custom_llm_provider=_PROVIDER,
                stream=request.stream,
            )
        except (BadRequestError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidRequest(
                f"Invalid value for 'input': {_reason(exc)}", param="input"
            ) from None
        body = {name: chat[name] for name in _CHAT_FIELDS if chat.get(name) is not None}
        body["messages"] = [_deepseek_role(m) for m in _plain(body.get("messages", []))]
        if "tools" in body:
            body["tools"] = _plain(body["tools"])
        body["model"] = request.model
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # response.completed has usage
        return body

    def from_chat(
        self, request: ResponsesRequest, chat: dict[str, Any], response_id: str
    ) -> dict[str, Any]:
        """The Responses object for a whole chat answer."""
        response = Config.transform_chat_completion_response_to_responses_api_response(
            request_input=_input(request.items()),
            responses_api_request=_params(request),
            chat_completion_response=chat,
        )
        return finished(request, response.model_dump(mode="json", exclude_none=True), response_id)

    def events(
        self,
        request: ResponsesRequest,
        chunks: AsyncIterator[dict[str, Any]],
        response_id: str,
        model: str,
    ) -> ResponseEvents:
        """The Responses stream for a chat stream."""
        return ResponseEvents(request, chunks, response_id, model)


def finished(request: ResponsesRequest, body: dict[str, Any], response_id: str) -> dict[str, Any]:
    """A Responses object as flashpro returns it: its own id, the request's `store`, and the
    reasoning item in the shape the streamed one has (a summary of DeepSeek's reasoning)."""
    body["id"] = response_id
    body["store"] = request.store
    body["previous_response_id"] = request.previous_response_id
    body.setdefault("created_at", int(time.time()))
    body["output"] = [_reasoning_item(item) for item in body.get("output") or ()]
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage.pop("cost", None)  # litellm's price map, not the policy's prices
    return body


def conversation(
    request: ResponsesRequest, history: Sequence[dict[str, Any]], response: dict[str, Any]
) -> list[dict[str, Any]]:
    """The turns a later `previous_response_id` continues: earlier ones, this input, this
    output (instructions are not carried over, as on OpenAI's API)."""
    return [*history, *request.items(), *(response.get("output") or ())]


class ResponseEvents:
    """The Responses stream for a chat stream: `response.created`, reasoning, text and
    function-call deltas, `response.completed`. `completed` holds the final object."""

    def __init__(
        self,
        request: ResponsesRequest,
        chunks: AsyncIterator[dict[str, Any]],
        response_id: str,
        model: str,
    ) -> None:
        self.request = request
        self.model = model
        self.response_id = response_id
        self.completed: dict[str, Any] | None = None
        self.sequence = 0
        self._events = LiteLLMCompletionStreamingIterator(
            model=model,
            litellm_custom_stream_wrapper=_ChunkFeed(chunks),
            request_input=_input(request.items()),
            responses_api_request=_params(request),
            custom_llm_provider=_PROVIDER,
        )

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in self._events:
                data: dict[str, Any] = event.model_dump(mode="json", exclude_none=True)
                self.sequence = int(data.get("sequence_number", self.sequence)) + 1
                response = data.get("response")
                if isinstance(response, dict):
                    data["response"] = finished(self.request, response, self.response_id)
                    if data.get("type") in ("response.completed", "response.incomplete"):
                        self.completed = data["response"]
                yield data
        finally:
            await self._events.aclose()

    def failure(self, code: str | None, message: str, param: str | None) -> list[dict[str, Any]]:
        """The events that end a stream an error cut short: `error`, then `response.failed`."""
        error = {"type": "error", "code": code, "message": message, "param": param}
        response = {
            "id": self.response_id,
            "object": "response",
            "created_at": int(time.time()),
            "model": self.model,
            "status": "failed",
            "error": {"code": code or "server_error", "message": message},
            "output": [],
        }
        failed = {"type": "response.failed", "response": response}
        events = []
        for event in (error, failed):
            events.append({**event, "sequence_number": self.sequence})
            self.sequence += 1
        return events


class _ChunkFeed:
    """What litellm's streaming iterator reads from (a `CustomStreamWrapper` look-alike): the
    pipeline's chat chunks as litellm stream objects."""

    logging_obj = None  # litellm's call logging: flashpro observes requests itself

    def __init__(self, chunks: AsyncIterator[dict[str, Any]]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> _ChunkFeed:
        return self

    async def __anext__(self) -> ModelResponseStream:
        return ModelResponseStream(**await anext(self._chunks))

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class _Replay:
    """A finished chat stream for litellm's synchronous streaming path (the warm-up)."""

    logging_obj = None

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> ModelResponseStream:
        return ModelResponseStream(**next(self._chunks))


def _input(items: list[dict[str, Any]]) -> ResponseInputParam:
    """Items as litellm's bridge types them (it reads them as mappings, as they are)."""
    return cast(ResponseInputParam, items)


def _params(request: ResponsesRequest) -> ResponsesAPIOptionalRequestParams:
    return cast(ResponsesAPIOptionalRequestParams, request.bridged())


def _reasoning_item(item: dict[str, Any]) -> dict[str, Any]:
    """litellm's whole-answer reasoning item (the text as `output_text` content) as the
    streamed one: the text as a summary, which the SDK's `ResponseReasoningItem` requires."""
    if item.get("type") != "reasoning" or item.get("summary"):
        return item
    text = "".join(part.get("text") or "" for part in item.get("content") or ())
    summary = [{"type": "summary_text", "text": text}] if text else []
    out = {"id": item.get("id"), "type": "reasoning", "summary": summary}
    if item.get("status"):
        out["status"] = item["status"]
    return out


def _deepseek_role(message: dict[str, Any]) -> dict[str, Any]:
    """DeepSeek refuses the `developer` role (400); it reads the same text as `system`."""
    if message.get("role") == "developer":
        return {**message, "role": "system"}
    return message


def _plain(value: Any) -> Any:
    """litellm's typed messages and tools as plain JSON data."""
    return orjson.loads(orjson.dumps(value, default=_dump))


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).removeprefix("litellm.")
    return text.strip()[:300] or type(exc).__name__
