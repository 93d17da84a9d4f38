"""The Upstream interface, the litellm upstream (the only module that talks to litellm) and the
error table every transport shares. I/O."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# No machine of ours needs litellm's remote price map; without this it retries a download.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import openai
from litellm.exceptions import ContextWindowExceededError, UnsupportedParamsError

from router.errors import (
    ContextTooLong,
    FlashproError,
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamBalanceExhausted,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from router.routing.cost import Usage
from router.routing.policy import Tier, Timeouts


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long one upstream call may take, in seconds (a tier's `timeouts` in the policy).

    `first_byte_s` counts from the start of the call to the answer's first byte: a stream's
    first event with data, or the first byte of a whole answer that is not whitespace. The blank
    lines and `: keep-alive` comments DeepSeek sends while a request is queued do not count, so
    a queued request times out (and a fallback tier can start) instead of waiting up to the ten
    minutes DeepSeek keeps it. None: no deadline of that kind."""

    connect_s: float = 10.0
    pool_wait_s: float = 3.0
    first_byte_s: float | None = 300.0
    total_s: float | None = 1800.0

    @classmethod
    def of(cls, timeouts: Timeouts) -> Deadlines:
        """A tier's `timeouts`, in seconds."""
        first, total = timeouts.first_byte_ms, timeouts.total_ms
        return cls(
            connect_s=timeouts.connect_ms / 1000,
            pool_wait_s=timeouts.pool_wait_ms / 1000,
            first_byte_s=None if first is None else first / 1000,
            total_s=None if total is None else total / 1000,
        )


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """Everything one upstream call needs; built by the pipeline from a Decision."""

    model: str
    messages: list[dict[str, Any]]
    params: Mapping[str, Any]
    thinking: str
    reasoning_effort: str | None
    api_base: str | None
    api_key: str | None
    timeout_s: float  # the longest silence between two reads of the answer (the idle gap)
    deadlines: Deadlines = Deadlines()
    # the wire format: OpenAI chat completions, or Anthropic messages (router/upstream/messages.py)
    wire: Literal["chat", "messages"] = "chat"
    vision: bool = False  # the tier reads image parts (policy `vision:`); else they are text

    @classmethod
    def to_tier(
        cls,
        tier: Tier,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        api_base: str | None,
        api_key: str | None,
    ) -> UpstreamCall:
        """A call to `tier`'s model with its thinking settings and timeout."""
        return cls(
            tier.model,
            messages,
            params,
            tier.thinking,
            tier.reasoning_effort,
            tier.api_base or api_base,
            api_key,
            tier.timeout_s,
            Deadlines.of(tier.timeouts),
            vision=tier.vision,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer: the OpenAI-format body to relay, and its usage."""

    body: dict[str, Any]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed chunk in OpenAI format; `usage` is set on the chunk that reports it.
    `keep_alive`: no chunk, the upstream's sign that the request waits in its queue."""

    data: dict[str, Any]
    usage: Usage | None = None
    keep_alive: bool = False


KEEP_ALIVE = Chunk({}, keep_alive=True)


class Upstream(Protocol):
    async def complete(self, call: UpstreamCall) -> Completion: ...

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Open the stream; upstream errors before the first chunk raise here."""
        ...


@dataclass
class LiteLLMUpstream:
    """The production upstream: `litellm.acompletion`, errors mapped to flashpro's own."""

    secrets: tuple[str, ...] = field(default_factory=tuple)  # scrubbed from error messages

    def __post_init__(self) -> None:
        litellm.suppress_debug_info = True
        litellm.telemetry = False

    def _kwargs(self, call: UpstreamCall) -> dict[str, Any]:
        # a copy: litellm may edit what it is given, and one parsed request can serve many
        # identical bodies (router/http/chat.py)
        kwargs: dict[str, Any] = copy.deepcopy(dict(call.params))
        kwargs.update(
            model=call.model,
            messages=call.messages,
            thinking={"type": call.thinking},
            timeout=call.timeout_s,
            num_retries=0,
        )
        if call.reasoning_effort is not None:
            kwargs["reasoning_effort"] = call.reasoning_effort
        if call.api_base is not None:
            kwargs["api_base"] = call.api_base
        if call.api_key is not None:
            kwargs["api_key"] = call.api_key
        return kwargs

    async def complete(self, call: UpstreamCall) -> Completion:
        try:
            response = await litellm.acompletion(**self._kwargs(call))
        except Exception as exc:  # the one place foreign errors are translated
            raise self.translate(exc) from exc
        body: dict[str, Any] = response.model_dump(exclude_none=True)
        return Completion(body=body, usage=Usage.from_wire(_clean_usage(body)))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        kwargs = self._kwargs(call)
        kwargs.update(stream=True, stream_options={"include_usage": True})
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as exc:
            raise self.translate(exc) from exc
        return self._chunks(response)

    async def _chunks(self, response: Any) -> AsyncIterator[Chunk]:
        try:
            async for chunk in response:
                data: dict[str, Any] = chunk.model_dump(exclude_none=True)
                usage = _clean_usage(data)
                yield Chunk(data, Usage.from_wire(usage) if usage else None)
        except Exception as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: BaseException) -> FlashproError:
        """Map a litellm/openai/httpx exception to flashpro's error tree."""
        message = scrub(_message_of(exc), self.secrets)
        if isinstance(exc, FlashproError):
            return exc
        if isinstance(exc, ContextWindowExceededError):
            return ContextTooLong(f"The prompt is too long for the model: {message}")
        if isinstance(exc, UnsupportedParamsError):
            return InvalidRequest(f"Unsupported parameter: {message}")
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamTimeout("The upstream model did not answer in time.")
        if isinstance(exc, openai.APIStatusError):
            return error_for_status(exc.status_code, message, _retry_after(exc))
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamError("Could not reach the upstream, or it dropped the connection.")
        if isinstance(exc, httpx.HTTPError):
            return translate_http(exc)
        return UpstreamError("The upstream call failed.")


def error_for_status(status: int, message: str, retry_after: str | None = None) -> FlashproError:
    """The table for an upstream HTTP error status, shared by every transport."""
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return UpstreamRateLimited(
            f"The upstream is rate-limiting requests: {message}", headers=headers
        )
    if status == 400 and _CONTEXT_MESSAGE in message.lower():
        return ContextTooLong(f"The prompt is too long for the model: {message}")
    if status == 402:
        return UpstreamBalanceExhausted(
            "The upstream account has run out of balance (DeepSeek 402 Insufficient Balance): "
            f"{message}. Top up the account of the proxy's upstream key; the request itself is "
            "fine."
        )
    if status in (401, 403):
        return UpstreamAuthFailed(
            f"The upstream refused flashpro's API key for this model (status {status}): "
            f"{message}. Check the proxy's upstream key (DEEPSEEK_API_KEY or the tier's "
            "api_key_env); the key you sent to flashpro is not the problem."
        )
    if 400 <= status < 500:
        mirrored = status if status in (400, 404, 422) else 400
        return UpstreamRejected(f"The upstream rejected the request: {message}", status=mirrored)
    if status == 503:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return UpstreamOverloaded("The upstream is overloaded (status 503).", headers=headers)
    return UpstreamError(f"The upstream failed (status {status}).")


def transport_failure(*, timed_out: bool) -> FlashproError:
    """Timeouts are 504s; every other transport failure (refused, dropped mid-body) a 502."""
    if timed_out:
        return UpstreamTimeout("The upstream model did not answer in time.")
    return UpstreamError("Could not reach the upstream, or it dropped the connection.")


def translate_http(exc: httpx.HTTPError) -> FlashproError:
    return transport_failure(timed_out=isinstance(exc, httpx.TimeoutException))


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """The text without upstream keys (the configured ones and anything shaped like a key)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def _clean_usage(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's usage without litellm's own `cost` (its price map, not the policy's prices)."""
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage.pop("cost", None)
        return usage
    return None


_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{6,}")
_CONTEXT_MESSAGE = "maximum context length"  # DeepSeek's (and OpenAI's) 400 wording


def _message_of(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.removeprefix("litellm.").strip()[:500]


def _retry_after(exc: BaseException) -> str | None:
    """The upstream's Retry-After: litellm keeps response headers apart from `response`."""
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        value = headers.get("retry-after") if headers else None
        if value:
            return str(value)
    return None
