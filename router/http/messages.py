"""HTTP edge for the Anthropic Messages API: `POST /v1/messages` and
`POST /v1/messages/count_tokens`, as a bare ASGI handler beside the chat one. I/O.

A thin adapter: the body is parsed into `MessagesRequest`, the pipeline routes its chat view
(classifier, policy, limits, budgets) and relays the Anthropic body itself to the tier's
Anthropic base URL; answers and stream events go back as DeepSeek sent them. Clients may send
their flashpro key as `x-api-key` (the Anthropic SDKs, Claude Code) or as a bearer token. Errors
use Anthropic's envelope, `{"type": "error", "error": {"type", "message"}}`, rendered by the
edges' one `serve`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from pydantic_core import ErrorDetails

from router.admission import admit, preview
from router.errors import FlashproError, MethodNotAllowed
from router.http.body import MAX_JSON_DEPTH
from router.http.chat import (
    Endpoint,
    Exchange,
    Receive,
    Scope,
    Send,
    answer_headers,
    decision_headers,
    headers_of,
    parse_json,
    read_body,
    request_id_for,
    send_json,
    send_stream,
    serve,
)
from router.http.streaming import named_event
from router.pipeline import cache_plan, complete, open_stream
from router.schemas import ChatRequest
from router.schemas_anthropic import (
    CountTokensRequest,
    MessagesRequest,
    chat_view,
    estimate_input_tokens,
)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH})
API = "messages"  # the `api` label of metrics and logs

# Anthropic's error types by HTTP status (docs.anthropic.com/en/api/errors)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error(error: FlashproError, request_id: str) -> dict[str, Any]:
    """Anthropic's error envelope for one of flashpro's errors."""
    status = error.status
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    body = {"type": kind, "message": error.message}
    return {"type": "error", "error": body, "request_id": request_id}


def with_bearer(headers: dict[str, str]) -> dict[str, str]:
    """The headers the pipeline reads, with an `x-api-key` standing in for a missing bearer
    token (caller, limits and the cache namespace all key on `authorization`)."""
    key = headers.get("x-api-key")
    if key and "authorization" not in headers:
        headers["authorization"] = f"Bearer {key}"
    return headers


def is_messages_body(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether a body is in the Anthropic format (for POST /v1/route): sent by an Anthropic
    client (`anthropic-version`), or shaped like one (a top-level `system`, content blocks of
    tool use, tool results or thinking, tools with an `input_schema`). A plain body of user
    and assistant texts is the same request in either format."""
    if "anthropic-version" in headers:
        return True
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return False
    if "system" in data or any(
        isinstance(tool, dict) and "input_schema" in tool for tool in data.get("tools") or ()
    ):
        return True
    kinds = {
        block.get("type")
        for message in data["messages"]
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict)
    }
    return bool(kinds & {"tool_use", "tool_result", "thinking"})


def routable(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> ChatRequest:
    """A Messages body as the chat view it is routed as (POST /v1/route)."""
    return chat_view(parse_json(body, CountTokensRequest, max_depth, most_telling))


def ignored_header(request: MessagesRequest) -> dict[str, str]:
    """`x-flashpro-ignored-tools`: the server tools the request declared, which no tier runs."""
    ignored = request.ignored_tools()
    return {"x-flashpro-ignored-tools": ",".join(sorted(set(ignored)))} if ignored else {}


def most_telling(errors: list[ErrorDetails]) -> ErrorDetails:
    """A union field (content: text or blocks) fails once per branch; the branch a validator
    refused (an image block, a server tool) says the most, else the deepest."""
    refused = [e for e in errors if e["type"] == "value_error"]
    return refused[0] if refused else max(errors, key=lambda e: len(e["loc"]))


async def sse(events: AsyncIterator[dict[str, Any]], request_id: str) -> AsyncIterator[bytes]:
    """Anthropic's server-sent events (`event:` named by type); a failure after the first byte
    becomes an `error` event, and the stream ends."""
    try:
        async for data in events:
            yield named_event(data)
    except FlashproError as exc:
        yield named_event(anthropic_error(exc, request_id))


class MessagesEndpoint(Endpoint):
    """`/v1/messages` and its count_tokens as an ASGI callable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = with_bearer(headers_of(scope))
        rid = request_id_for(headers.get("x-request-id"))
        exchange = Exchange(self.deps_of(), rid, api=API)
        if scope["method"] != "POST":
            handle = _refuse()
        elif scope["path"] == COUNT_TOKENS_PATH:
            handle = self._count(exchange, headers, receive, send)
        else:
            handle = self._create(exchange, headers, receive, send)
        await serve(exchange, send, handle, anthropic_error, {"request-id": rid})

    async def _create(
        self, exchange: Exchange, headers: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        deps, rid = exchange.deps, exchange.request_id
        body = await read_body(receive, headers, self.max_body_bytes)
        request = parse_json(body, MessagesRequest, self.max_json_depth, most_telling)
        view = chat_view(request)
        routed = exchange.routed = await admit(deps, view, headers, rid, api=API, anthropic=request)
        plan = cache_plan(deps, routed, headers)
        out = {"request-id": rid, **ignored_header(request)}
        if request.stream:
            opened, whole = await open_stream(deps, routed, plan), list[dict[str, Any]]()
            out.update(answer_headers(opened, rid))
            chunks = self.watched(routed, opened.chunks, whole)
            await send_stream(send, receive, sse(chunks, rid), out)
            self.offer(routed, opened, whole[0] if whole else None)
            return
        answer = await complete(deps, routed, plan)
        out["x-flashpro-cost-usd"] = f"{answer.cost_usd:.8f}"
        await send_json(send, 200, answer.body, {**out, **answer_headers(answer, rid)})
        self.offer(routed, answer, answer.body)

    async def _count(
        self, exchange: Exchange, headers: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        """flashpro's own estimate (about four characters a token), for an authorised caller
        and a model the policy knows; the decision headers say where the call would go."""
        body = await read_body(receive, headers, self.max_body_bytes)
        request = parse_json(body, CountTokensRequest, self.max_json_depth, most_telling)
        routed = await preview(exchange.deps, chat_view(request), headers)
        rid = exchange.request_id
        out = {"request-id": rid, **decision_headers(routed.decision, rid)}
        await send_json(send, 200, {"input_tokens": estimate_input_tokens(request)}, out)


async def _refuse() -> None:
    raise MethodNotAllowed("Method Not Allowed: use POST", headers={"allow": "POST"})
