"""Call DeepSeek's OpenAI-format API directly over one pooled HTTP session. I/O.

litellm's per-call cost (parameter mapping, logging hooks, response objects) dominated a
benchmark of flashpro against a zero-latency upstream; `DirectUpstream` speaks DeepSeek's wire
format itself with the request shaping litellm's `DeepSeekChatConfig` applies, a keep-alive
connection pool, and the error table of `router.upstream`. litellm still serves every model id
that does not start with `deepseek/` (`ByProvider`), and all of them when
`FLASHPRO_TRANSPORT=litellm`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson
from yarl import URL

from router.cost import Usage
from router.errors import FlashproError, UpstreamError
from router.upstream import (
    Chunk,
    Completion,
    LiteLLMUpstream,
    Upstream,
    UpstreamCall,
    error_for_status,
    scrub,
    transport_failure,
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


@dataclass
class DirectUpstream:
    """DeepSeek over one pooled aiohttp session (HTTP/1.1 keep-alive), errors mapped once.

    aiohttp rather than httpx: against the simulator at 8 concurrent requests, httpx's pool spent
    about 1.6 ms of CPU a request (it polls every pooled socket to check expiry), aiohttp 0.2 ms
    (bench/README.md). The session is made on first use, inside the serving event loop.
    """

    secrets: tuple[str, ...] = field(default_factory=tuple)  # scrubbed from error messages
    default_api_base: str = DEFAULT_API_BASE
    max_connections: int = 4096  # a stream holds a connection for its whole length
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _proxies: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    # parsed once: aiohttp would parse the URL and build the timeout again for every request
    _urls: dict[str, URL] = field(default_factory=dict, init=False, repr=False)
    _timeouts: dict[float, aiohttp.ClientTimeout] = field(
        default_factory=dict, init=False, repr=False
    )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                keepalive_timeout=30,
                ttl_dns_cache=300,
                ssl=self.ssl_context or ssl.create_default_context(),
            )
            self._session = aiohttp.ClientSession(  # an API needs no cookies: skip the jar's work
                connector=connector,
                headers={"user-agent": "flashpro"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _post(self, call: UpstreamCall, *, stream: bool) -> aiohttp.ClientResponse:
        base = (call.api_base or self.default_api_base).rstrip("/")
        headers = {"content-type": "application/json"}
        if call.api_key:
            headers["authorization"] = f"Bearer {call.api_key}"
        try:
            return await self._client().post(
                self._url(base),
                proxy=self._proxy(base),
                data=orjson.dumps(request_body(call, stream=stream)),
                headers=headers,
                timeout=self._timeout(call.timeout_s),
            )
        except _FAILURES as exc:
            raise _failure(exc) from exc

    def _url(self, base: str) -> URL:
        url = self._urls.get(base)
        if url is None:
            url = self._urls[base] = URL(base + "/chat/completions")
        return url

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        """Like httpx's (and so the openai SDK's) timeout: per connect and per read, not total."""
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
            self._timeouts[seconds] = timeout
        return timeout

    def _proxy(self, base: str) -> str | None:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once per base URL: aiohttp's trust_env
        re-reads them (and ~/.netrc) on every request, 4% of a request's CPU here."""
        if base not in self._proxies:
            scheme, _, rest = base.partition("://")
            host = rest.split("/", 1)[0]
            proxy = getproxies().get(scheme)
            self._proxies[base] = None if proxy is None or proxy_bypass(host) else proxy
        return self._proxies[base]

    async def complete(self, call: UpstreamCall) -> Completion:
        response = await self._post(call, stream=False)
        raw = await _read(response)
        if response.status >= 400:
            raise self._rejection(response, raw)
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
        return _events(response)

    def _rejection(self, response: aiohttp.ClientResponse, raw: bytes) -> FlashproError:
        message = scrub(_error_message(raw), self.secrets)
        return error_for_status(response.status, message, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_FAILURES = (aiohttp.ClientError, TimeoutError)


def _failure(exc: BaseException) -> FlashproError:
    """aiohttp's timeouts (connect or read) are TimeoutErrors; the rest are connection errors."""
    return transport_failure(timed_out=isinstance(exc, TimeoutError))


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except _FAILURES as exc:
        raise _failure(exc) from exc
    finally:
        response.release()


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
    """Parse server-sent events into chunks until `[DONE]`; a drop raises UpstreamError."""
    buffer = b""
    done = False
    try:
        async for part in response.content.iter_any():
            if done:
                continue  # read to the end so the connection goes back to the pool
            buffer += part
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators and `: keep-alive` comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                yield _chunk(payload)
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
    """`deepseek/` model ids go to the direct transport; every other provider to litellm."""

    direct: DirectUpstream
    other: Upstream

    def _for(self, call: UpstreamCall) -> Upstream:
        return self.direct if call.model.startswith(PROVIDER_PREFIX) else self.other

    async def complete(self, call: UpstreamCall) -> Completion:
        return await self._for(call).complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        return await self._for(call).stream(call)

    async def aclose(self) -> None:
        await self.direct.aclose()


def open_upstream(transport: Transport, secrets: tuple[str, ...]) -> Upstream:
    """The production upstream for the configured transport."""
    litellm_upstream = LiteLLMUpstream(secrets=secrets)
    if transport == "litellm":
        return litellm_upstream
    return ByProvider(DirectUpstream(secrets=secrets), litellm_upstream)
