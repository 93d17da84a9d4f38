"""Call DeepSeek's OpenAI-format API directly over one pooled HTTP session. I/O.

litellm's per-call cost (parameter mapping, logging hooks, response objects) dominated a
benchmark of flashpro against a zero-latency upstream; `DirectUpstream` speaks DeepSeek's wire
format itself with the request shaping litellm's `DeepSeekChatConfig` applies, a keep-alive
connection pool, and the error table of `router.upstream.base`. litellm still serves every model id
that does not start with `deepseek/` (`ByProvider`), and all of them when
`FLASHPRO_TRANSPORT=litellm`.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import orjson

from router.errors import FlashproError, UpstreamError
from router.routing.cost import Usage
from router.upstream.base import (
    Chunk,
    Completion,
    LiteLLMUpstream,
    Upstream,
    UpstreamCall,
    error_for_status,
    scrub,
    transport_failure,
)
from router.upstream.connections import Origin, Pool, Proxy, Response, Target
from router.upstream.messages import (
    DEFAULT_ANTHROPIC_API_BASE,
    MESSAGES_PATH,
    event_usage,
    messages_body,
    parse_event,
    parse_message,
    usage_of,
)

Transport = Literal["direct", "litellm"]

DEFAULT_API_BASE = "https://api.deepseek.com/beta"  # litellm's default for deepseek/ models
PROVIDER_PREFIX = "deepseek/"
_EFFORTS = frozenset({"minimal", "low", "medium", "high", "xhigh", "max", "ultra"})
_NO_REASONING = frozenset({"deepseek-chat"})  # litellm's price map: no supports_reasoning
_NOT_RELAYED = frozenset({"user"})  # litellm keeps `user` as call metadata; DeepSeek has none
_PLACEHOLDER = " "  # the least reasoning_content DeepSeek accepts (what litellm sends)


def _vision(model: str) -> bool:
    """Flash models take images (litellm's price map); Pro does not."""
    return "flash" in model


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
        "messages": [_message(m, fill, _vision(model)) for m in call.messages],
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


def target(url: str, proxy_url: str | None = None) -> Target:
    """Prepare `url` (http or https), reached directly or through the HTTP proxy `proxy_url`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    proxy = _proxy(proxy_url) if proxy_url else None
    host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode()
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        authority = f"{authority}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    lines = [f"POST {path} HTTP/1.1", f"host: {authority}"]
    if proxy is not None and scheme == "http":  # a forward proxy takes the absolute form
        lines[0] = f"POST {scheme}://{authority}{path} HTTP/1.1"
        if proxy.authorization:
            lines.append(f"proxy-authorization: {proxy.authorization.decode()}")
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    return Target(Origin(scheme, host, port, proxy), head)


def _proxy(url: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ValueError(f"only http:// proxies are supported, not {url!r}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(credentials.encode())
    return Proxy(parts.hostname, parts.port or 80, authorization)


def header_line(name: str, value: str) -> bytes:
    """One request header line; a line break in a value (a key pasted with its newline) would
    end the head early, so it is refused."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header has a line break")
    return f"{name}: {value}\r\n".encode("latin-1")


@dataclass
class DirectUpstream:
    """DeepSeek over flashpro's own keep-alive HTTP/1.1 pool (router/upstream/connections.py), errors
    mapped once.

    Neither httpx nor aiohttp: against the simulator at 8 concurrent requests, httpx's pool spent
    about 1.6 ms of CPU a request (it polls every pooled socket to check expiry) and aiohttp's
    client about 0.18 ms, most of a proxied request's CPU beside flashpro's own work; the pool
    here does the one thing needed, a POST and its answer (bench/README.md has the figures).
    """

    secrets: tuple[str, ...] = field(default_factory=tuple)  # scrubbed from error messages
    default_api_base: str = DEFAULT_API_BASE
    max_connections: int = 4096  # a stream holds a connection for its whole length
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store
    _pool: Pool | None = field(default=None, init=False, repr=False)
    # per base URL: the prepared target (proxy settings are read once, see `_target`)
    _targets: dict[str, Target] = field(default_factory=dict, init=False, repr=False)
    _fields: dict[tuple[str | None, bool, str], bytes] = field(
        default_factory=dict, init=False, repr=False
    )

    def _connections(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.ssl_context, limit=self.max_connections)
        return self._pool

    async def _post(self, call: UpstreamCall, *, stream: bool) -> Response:
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
        try:
            to = self._target(base, path)
            fields = self._header_fields(call.api_key, stream, call.wire)
        except ValueError as exc:
            raise UpstreamError(f"The upstream request cannot be sent: {exc}.") from None
        try:
            return await self._connections().post(to, fields, body, call.timeout_s)
        except _FAILURES as exc:
            raise _failure(exc) from exc

    def _target(self, base: str, path: str) -> Target:
        """The base URL's target, with HTTPS_PROXY / HTTP_PROXY / NO_PROXY read once per base URL
        (reading them per request cost 4% of a request's CPU)."""
        prepared = self._targets.get(base + path)
        if prepared is None:
            base = base.rstrip("/")
            scheme, _, rest = base.partition("://")
            host = rest.split("/", 1)[0]
            proxy = getproxies().get(scheme.lower())
            if proxy is not None and proxy_bypass(host):
                proxy = None
            prepared = self._targets[base + path] = target(base + path, proxy)
        return prepared

    def _header_fields(self, api_key: str | None, stream: bool, wire: str = "chat") -> bytes:
        fields = self._fields.get((api_key, stream, wire))
        if fields is None:
            accept = "text/event-stream" if stream else "application/json"
            # DeepSeek's Anthropic API reads the key from x-api-key, as Anthropic's does
            key = b""
            if api_key and wire == "messages":
                key = header_line("x-api-key", api_key)
            elif api_key:
                key = header_line("authorization", f"Bearer {api_key}")
            fields = b"".join(
                (
                    header_line("content-type", "application/json"),
                    header_line("accept", accept),
                    header_line("accept-encoding", "identity"),
                    header_line("user-agent", "flashpro"),
                    key,
                )
            )
            self._fields[(api_key, stream, wire)] = fields
        return fields

    async def complete(self, call: UpstreamCall) -> Completion:
        response = await self._post(call, stream=False)
        raw = await _read(response)
        if response.status >= 400:
            raise self._rejection(response, raw)
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
        response = await self._post(call, stream=True)
        if response.status >= 400:
            raise self._rejection(response, await _read(response))
        return _events(response, _message_event if call.wire == "messages" else _chat_event)

    def _rejection(self, response: Response, raw: bytes) -> FlashproError:
        message = scrub(_error_message(raw), self.secrets)
        return error_for_status(response.status, message, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


_FAILURES = (OSError,)  # connection failures, TLS errors and timeouts (connections.py)


def _failure(exc: BaseException) -> FlashproError:
    """A timeout (connect or read) is a TimeoutError; the rest are connection errors."""
    return transport_failure(timed_out=isinstance(exc, TimeoutError))


async def _read(response: Response) -> bytes:
    try:
        return await response.read()
    except _FAILURES as exc:
        raise _failure(exc) from exc


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
    response: Response, read: Callable[[bytes], tuple[Chunk | None, bool]]
) -> AsyncIterator[Chunk]:
    """Parse server-sent events into chunks until the format's last one (`read` says which);
    `event:` lines are not needed (Anthropic's data carry their type); a drop raises
    UpstreamError."""
    buffer = b""
    done = False
    try:
        async for part in response.chunks():
            if done:
                continue  # read to the end so the connection goes back to the pool
            buffer += part
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators and `: keep-alive` comments
                chunk, done = read(line[5:].strip())
                if chunk is not None:
                    yield chunk
                if done:
                    break
    except _FAILURES as exc:
        raise _failure(exc) from exc
    finally:
        response.release()
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


def open_upstream(transport: Transport, secrets: tuple[str, ...]) -> Upstream:
    """The production upstream for the configured transport."""
    litellm_upstream = LiteLLMUpstream(secrets=secrets)
    direct = DirectUpstream(secrets=secrets)
    return ByProvider(direct, litellm_upstream, chat_direct=transport == "direct")
