"""HTTP edge for the Anthropic Messages API: `POST /v1/messages` and
`POST /v1/messages/count_tokens`, as a bare ASGI handler beside the chat one. I/O.

A thin adapter: the body is parsed into `MessagesRequest`, the pipeline routes its chat view
(classifier, policy, limits, budgets) and relays the Anthropic body itself to the tier's
Anthropic base URL; answers and stream events go back as DeepSeek sent them. Clients may send
their flashpro key as `x-api-key` (the Anthropic SDKs, Claude Code) or as a bearer token. Errors
use Anthropic's envelope, `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from router.errors import FlashproError, InvalidRequest, RouteNotFound
from router.http.chat import (
    ClientGone,
    Receive,
    Scope,
    Send,
    answer_headers,
    decision_headers,
    headers_of,
    read_body,
    request_id_for,
    send_json,
    send_stream,
)
from router.pipeline import Deps, admit, cache_plan, complete, observe, open_stream, preview
from router.routing.routed import Routed
from router.schemas_anthropic import (
    CountTokensRequest,
    MessagesRequest,
    chat_view,
    estimate_input_tokens,
)

log = logging.getLogger("flashpro")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH})
API = "messages"  # the `api` label of metrics and logs

M = TypeVar("M", bound=MessagesRequest)

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


def error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def with_bearer(headers: dict[str, str]) -> dict[str, str]:
    """The headers the pipeline reads, with an `x-api-key` standing in for a missing bearer
    token (caller, limits and the cache namespace all key on `authorization`)."""
    key = headers.get("x-api-key")
    if key and "authorization" not in headers:
        headers["authorization"] = f"Bearer {key}"
    return headers


def parse_messages(body: bytes, model: type[M]) -> M:
    """Validate a Messages body; every problem becomes a 400 naming the field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = _most_telling(exc.errors(include_url=False))
        param = ".".join(str(p) for p in error["loc"]) or None
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {reason}", param=param) from None


def _most_telling(errors: list[ErrorDetails]) -> ErrorDetails:
    """A union field fails once per branch; the branch a validator refused says the most."""
    refused = [e for e in errors if e["type"] == "value_error"]
    return refused[0] if refused else max(errors, key=lambda e: len(e["loc"]))


async def sse(events: AsyncIterator[dict[str, Any]], request_id: str) -> AsyncIterator[bytes]:
    """Anthropic's server-sent events (`event:` named by type); a failure after the first byte
    becomes an `error` event, and the stream ends."""
    try:
        async for data in events:
            yield b"event: " + str(data.get("type")).encode() + b"\ndata: " + orjson.dumps(data)
            yield b"\n\n"
    except FlashproError as exc:
        error = error_body(exc.status, exc.message, request_id)
        yield b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"


class MessagesEndpoint:
    """`/v1/messages` and its count_tokens as an ASGI callable."""

    def __init__(self, deps_of: Callable[[], Deps], max_body_bytes: int) -> None:
        self.deps_of = deps_of
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = with_bearer(headers_of(scope))
        rid = request_id_for(headers.get("x-request-id"))
        deps = self.deps_of()
        routed: Routed | None = None
        counting = scope["path"] == COUNT_TOKENS_PATH
        try:
            if scope["method"] != "POST":
                raise RouteNotFound("Method Not Allowed", status=405, headers={"allow": "POST"})
            body = await read_body(receive, headers, self.max_body_bytes)
            if counting:
                await self._count(
                    deps, send, parse_messages(body, CountTokensRequest), headers, rid
                )
                return
            request = parse_messages(body, MessagesRequest)
            routed = await admit(deps, chat_view(request), headers, rid, api=API, anthropic=request)
            plan = cache_plan(deps, routed, headers)
            if request.stream:
                opened = await open_stream(deps, routed, plan)
                out = {"request-id": rid, **answer_headers(opened, rid)}
                await send_stream(send, receive, sse(opened.chunks, rid), out)
                return
            answer = await complete(deps, routed, plan)
            out = {"request-id": rid, "x-flashpro-cost-usd": f"{answer.cost_usd:.8f}"}
            await send_json(send, 200, answer.body, {**out, **answer_headers(answer, rid)})
        except ClientGone:
            if not counting:
                observe(
                    deps, routed, request_id=rid, status=499, error="client_disconnected", api=API
                )
        except FlashproError as exc:
            if not counting:
                observe(
                    deps,
                    routed,
                    request_id=rid,
                    status=exc.status,
                    error=exc.code or "error",
                    api=API,
                )
            if exc.status >= 500:
                log.warning("request %s failed: %s", rid, exc.message)
            out = {**exc.headers, "request-id": rid, "x-flashpro-request-id": rid}
            await send_json(send, exc.status, error_body(exc.status, exc.message, rid), out)
        except Exception as exc:
            log.exception("request %s: unexpected error", rid, exc_info=exc)
            if not counting:
                observe(deps, routed, request_id=rid, status=500, error="internal_error", api=API)
            message = f"Internal error; quote request id {rid} when reporting it."
            out = {"request-id": rid, "x-flashpro-request-id": rid}
            await send_json(send, 500, error_body(500, message, rid), out)

    async def _count(
        self,
        deps: Deps,
        send: Send,
        request: CountTokensRequest,
        headers: dict[str, str],
        rid: str,
    ) -> None:
        """flashpro's own estimate (about four characters a token), for an authorised caller
        and a model the policy knows; the decision headers say where the call would go."""
        routed = await preview(deps, chat_view(request), headers)
        out = {"request-id": rid, **decision_headers(routed.decision, rid)}
        await send_json(send, 200, {"input_tokens": estimate_input_tokens(request)}, out)
