"""Call DeepSeek's OpenAI-format API directly over one pooled HTTP session. I/O.

litellm's per-call cost (parameter mapping, logging hooks, response objects) dominated a
benchmark of flashpro against a zero-latency upstream; `DirectUpstream` speaks DeepSeek's wire
format itself with the request shaping litellm's `DeepSeekChatConfig` applies, over the pooled
HTTP client of upstream/client.py (aiohttp), with the error table of `router.upstream.base`. litellm still serves every model id
that does not start with `deepseek/` (`ByProvider`), and all of them when
`FLASHPRO_TRANSPORT=litellm`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.request import getproxies, proxy_bypass

import orjson

from router.errors import FlashproError, UpstreamError
from router.routing.cost import Usage
from router.upstream.base import (
    KEEP_ALIVE,
    Chunk,
    Completion,
    LiteLLMUpstream,
    Upstream,
    UpstreamCall,
    error_for_status,
    scrub,
    transport_failure,
)
from router.upstream.client import ClientLimits, HttpClient, Response, first_byte_timeout
from router.upstream.messages import (
    DEFAULT_ANTHROPIC_API_BASE,
    MESSAGES_PATH,
    event_usage,
    messages_body,
    parse_event,
    parse_message,
    usage_of,
)
from router.upstream.sse import EventDecoder, EventStreamError

Transport = Literal["direct", "litellm"]

DEFAULT_API_BASE = "https://api.deepseek.com/beta"  # litellm's default for deepseek/ models
PROVIDER_PREFIX = "deepseek/"
_EFFORTS = frozenset({"minimal", "low", "medium", "high", "xhigh", "max", "ultra"})
_NO_REASONING = frozenset({"deepseek-chat"})  # litellm's price map: no supports_reasoning
_NOT_RELAYED = frozenset({"user"})  # litellm keeps `user` as call metadata; DeepSeek has none
_PLACEHOLDER = " "  # the least reasoning_content DeepSeek accepts (what litellm sends)


def request_body(call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
    """The JSON body DeepSeek receives: litellm's DeepSeek request shaping, no more.

    `thinking` is always explicit; `reasoning_effort` only for a known effort with thinking on;
    with thinking on, an assistant turn without `reasoning_content` gets a placeholder (DeepSeek
    answers 400 when a tool-call turn lacks it); only `function` tools are relayed.
    """
    model = call.model.removeprefix(PROVIDER_PREFIX)
    thinking = call.thinking == "enabled"
    fill = thinking and model not in _NO_REASONING
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m, fill, call.vision) for m in call.messages],
    }
    for name, value in call.params.items():
        if name not in _NOT_RELAYED:
            body[name] = value
    _drop_unsupported_tools(body)
    body["thinking"] = {"type": call.thinking}
    if thinking and call.reasoning_effort in _EFFORTS:
        body["reasoning_effort"] = call.reasoning_effort
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _message(message: dict[str, Any], fill: bool, vision: bool) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and not (vision and _forwardable(message, content)):
        text = "".join(p["text"] for p in content if isinstance(p, dict) and p.get("text"))
        if text:
            message = {**message, "content": text}
    if fill and message.get("role") == "assistant" and not message.get("reasoning_content"):
        message = {**message, "reasoning_content": _PLACEHOLDER}
    return message


def _forwardable(message: dict[str, Any], parts: list[Any]) -> bool:
    """A user message of well-formed text and image parts with at least one image."""
    if message.get("role") != "user":
        return False
    kinds = []
    for part in parts:
        if not isinstance(part, dict):
            return False
        kind = part.get("type")
        payload = part.get("image_url") if kind == "image_url" else part.get("text")
        if isinstance(payload, dict):
            payload = payload.get("url")
        if kind not in ("text", "image_url") or not isinstance(payload, str):
            return False
        if kind == "image_url" and not payload:
            return False
        kinds.append(kind)
    return "image_url" in kinds


def _drop_unsupported_tools(body: dict[str, Any]) -> None:
    """DeepSeek accepts only `function` tools and rejects a request naming any other type."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return
    functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if len(functions) == len(tools):
        return
    if not functions:
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            body.pop(name, None)
        return
    body["tools"] = functions
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        names = {(t.get("function") or {}).get("name") for t in functions}
        wanted = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or wanted not in names:
            del body["tool_choice"]


@dataclass
class DirectUpstream:
    """DeepSeek over one pooled aiohttp session (upstream/client.py), errors mapped once.

    aiohttp rather than httpx: against the simulator at 8 concurrent requests httpx's pool spent
    about 1.6 ms of CPU a request (it polls every pooled socket to check expiry) and aiohttp's
    client about 0.12 ms (bench/README.md has the figures).
    """

    secrets: tuple[str, ...] = field(default_factory=tuple)  # scrubbed from error messages
    default_api_base: str = DEFAULT_API_BASE
    limits: ClientLimits = field(default_factory=ClientLimits)
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store
    _http: HttpClient | None = field(default=None, init=False, repr=False)
    # per base URL: the proxy to use (HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once)
    _proxies: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _headers: dict[tuple[str | None, bool, str], dict[str, str]] = field(
        default_factory=dict, init=False, repr=False
    )

    def _client(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient(self.limits, self.ssl_context)
        return self._http

    async def _post(
        self, call: UpstreamCall, first_byte_at: float | None, *, stream: bool
    ) -> Response:
        """Send the call and wait for the answer's head. A stream's deadlines are kept by the
        client (aiohttp's `total`, the first event by `first_byte_at`); a whole answer's by the
        caller, with one timer."""
        if call.wire == "messages":  # Anthropic format, to the tier's Anthropic base URL
            shaped = messages_body(
                call.model,
                call.messages,
                call.params,
                call.thinking,
                call.reasoning_effort,
                stream=stream,
            )
            base, path = call.api_base or DEFAULT_ANTHROPIC_API_BASE, MESSAGES_PATH
        else:
            shaped = request_body(call, stream=stream)
            base, path = call.api_base or self.default_api_base, "/chat/completions"
        body = orjson.dumps(shaped)
        base = base.rstrip("/")
        try:
            headers = self._request_headers(call.api_key, stream, call.wire)
        except ValueError as exc:
            raise UpstreamError(f"The upstream request cannot be sent: {exc}.") from None
        return await self._client().post(
            base + path,
            headers,
            body,
            call.deadlines,
            call.timeout_s,
            self._proxy(base),
            first_byte_at,
            total=stream,
        )

    def _proxy(self, base: str) -> str | None:
        """The proxy for a base URL, from HTTPS_PROXY / HTTP_PROXY / NO_PROXY read once per base
        URL (reading them per request cost 4% of a request's CPU)."""
        if base not in self._proxies:
            scheme, _, rest = base.partition("://")
            host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
            proxy = getproxies().get(scheme.lower())
            self._proxies[base] = None if proxy is None or proxy_bypass(host) else proxy
        return self._proxies[base]

    def _request_headers(self, api_key: str | None, stream: bool, wire: str) -> dict[str, str]:
        headers = self._headers.get((api_key, stream, wire))
        if headers is None:
            headers = {
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
                "accept-encoding": "identity",
                "user-agent": "flashpro",
            }
            # DeepSeek's Anthropic API reads the key from x-api-key, as Anthropic's does
            if api_key and wire == "messages":
                headers["x-api-key"] = header_value("x-api-key", api_key)
            elif api_key:
                headers["authorization"] = header_value("authorization", f"Bearer {api_key}")
            self._headers[(api_key, stream, wire)] = headers
        return headers

    async def complete(self, call: UpstreamCall) -> Completion:
        """A whole answer, under one timer: due at the first-byte deadline until the answer's
        first byte that is not whitespace, then at the whole-call deadline."""
        deadlines, now = call.deadlines, asyncio.get_running_loop().time()
        first_at = None if deadlines.first_byte_s is None else now + deadlines.first_byte_s
        total_at = None if deadlines.total_s is None else now + deadlines.total_s
        started = False

        def first_byte() -> None:
            nonlocal started
            started = True
            timer.reschedule(total_at)

        try:
            async with asyncio.timeout_at(_earliest(first_at, total_at)) as timer:
                response = await self._post(call, None, stream=False)
                if not 200 <= response.status < 300:
                    raise await self._rejection(call, response)
                raw = await response.read(first_byte)
        except TimeoutError:
            if not started and first_at is not None and first_at <= (total_at or first_at):
                raise first_byte_timeout() from None
            raise transport_failure(timed_out=True) from None
        if call.wire == "messages":
            message = parse_message(raw)
            return Completion(body=message, usage=usage_of(message.get("usage")))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("The upstream sent an answer that is not JSON.") from exc
        if not isinstance(body, dict) or "choices" not in body:
            raise UpstreamError("The upstream sent an answer without choices.")
        return Completion(body=body, usage=Usage.from_wire(body.get("usage")))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        first_byte_s = call.deadlines.first_byte_s
        first_byte_at = None
        if first_byte_s is not None:
            first_byte_at = asyncio.get_running_loop().time() + first_byte_s
        response = await self._post(call, first_byte_at, stream=True)
        if not 200 <= response.status < 300:
            raise await self._rejection(call, response)
        read = _message_event if call.wire == "messages" else _chat_event
        return _events(response, first_byte_at, read)

    async def _rejection(self, call: UpstreamCall, response: Response) -> FlashproError:
        """An answer that is not a 2xx: an error status with its message (keys scrubbed, the
        call's own included, so a key added by a policy reload is never echoed), or a 502 for
        a status the API never sends (1xx such as 101, 3xx)."""
        if response.status < 400:
            response.close()
            return UpstreamError(f"The upstream answered with status {response.status}.")
        raw = await response.read()
        secrets = (*self.secrets, call.api_key) if call.api_key else self.secrets
        message = scrub(_error_message(raw), secrets)
        return error_for_status(response.status, message, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _earliest(*moments: float | None) -> float | None:
    given = [moment for moment in moments if moment is not None]
    return min(given) if given else None


def header_value(name: str, value: str) -> str:
    """A request header value; a line break in it (a key pasted with its newline) would end
    the head early, so it is refused."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header has a line break")
    return value


_AFTER_DONE_BYTES = 64 * 1024  # read past [DONE] to the body's end, to pool the connection


def _chat_event(payload: bytes) -> tuple[Chunk | None, bool]:
    """(the chunk, whether the stream is done): chat streams end with `[DONE]`."""
    if payload == b"[DONE]":
        return None, True
    return _chunk(payload), False


def _message_event(payload: bytes) -> tuple[Chunk | None, bool]:
    """Anthropic streams end with the `message_stop` event itself."""
    data = parse_event(payload)
    return Chunk(data, event_usage(data)), data["type"] == "message_stop"


async def _events(
    response: Response,
    first_byte_at: float | None,
    read: Callable[[bytes], tuple[Chunk | None, bool]] = _chat_event,
) -> AsyncIterator[Chunk]:
    """The stream's events as chunks until the format's last one (`read` says which; `event:`
    lines are not needed, Anthropic's data carry their type); `: keep-alive` comments before
    the first event with data as keep-alive chunks; empty events skipped. A drop raises
    UpstreamError."""
    decoder = EventDecoder()
    until = first_byte_at  # the first event with data is due by then; comments do not count
    done = False
    try:
        while not done and (part := await response.next_part(until)):
            try:
                events = decoder.feed(part)
            except EventStreamError as exc:
                raise UpstreamError(f"The upstream broke its event stream: {exc}.") from None
            for event in events:
                if event.data is None:
                    if until is not None and event.comment:
                        yield KEEP_ALIVE
                    continue
                payload = event.data.strip()
                if not payload:
                    continue  # an empty `data:` event
                chunk, done = read(payload)
                until = None
                if chunk is not None:
                    yield chunk
                if done:
                    break
        if done:
            extra = 0
            while extra <= _AFTER_DONE_BYTES and (part := await response.next_part()):
                extra += len(part)
    finally:
        response.close()  # nothing if read to the end (the connection is pooled again)
    if not done:
        raise UpstreamError("The upstream closed the stream before it finished.")


def _chunk(payload: bytes) -> Chunk:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from exc
    if not isinstance(data, dict) or "error" in data:
        raise UpstreamError("The upstream reported an error mid-stream.")
    usage = data.get("usage")
    return Chunk(data, Usage.from_wire(usage) if usage else None)


def _error_message(raw: bytes) -> str:
    try:
        message = orjson.loads(raw)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:500].decode(errors="replace")
    return str(message)[:500]


@dataclass
class ByProvider:
    """`deepseek/` model ids go to the direct transport (unless `chat_direct` is off); every
    other provider to litellm. Anthropic-format calls always go direct: litellm has no relay
    that keeps DeepSeek's thinking blocks as they are."""

    direct: DirectUpstream
    other: Upstream
    chat_direct: bool = True

    def _for(self, call: UpstreamCall) -> Upstream:
        if call.wire == "messages":
            return self.direct
        if self.chat_direct and call.model.startswith(PROVIDER_PREFIX):
            return self.direct
        return self.other

    async def complete(self, call: UpstreamCall) -> Completion:
        return await self._for(call).complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        return await self._for(call).stream(call)

    async def aclose(self) -> None:
        await self.direct.aclose()


def open_upstream(
    transport: Transport, secrets: tuple[str, ...], limits: ClientLimits | None = None
) -> Upstream:
    """The production upstream for the configured transport."""
    litellm_upstream = LiteLLMUpstream(secrets=secrets)
    direct = DirectUpstream(secrets=secrets, limits=limits or ClientLimits())
    return ByProvider(direct, litellm_upstream, chat_direct=transport == "direct")
