"""HTTP edge for the OpenAI Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`,
as a bare ASGI handler like the chat one. I/O.

A thin adapter over the chat pipeline: the body becomes a chat request (litellm's bridge,
router/upstream/bridge.py, with the turns a `previous_response_id` names put first), which the
pipeline admits, routes, caches and answers like any chat request; the answer (or its stream)
goes back in the Responses format, and is stored for later turns unless `store` is false.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from router.admission import admit
from router.errors import FlashproError, InvalidRequest, MethodNotAllowed, RouteNotFound, clip
from router.http.body import MAX_JSON_DEPTH
from router.http.chat import (
    Endpoint,
    Exchange,
    Receive,
    Scope,
    Send,
    answer_headers,
    headers_of,
    parse_json,
    read_body,
    request_id_for,
    send_json,
    send_stream,
    serve,
)
from router.http.streaming import named_event
from router.pipeline import Deps, cache_plan, complete, open_stream
from router.routing.auth import authorize
from router.routing.callers import Caller, bearer_digest
from router.schemas import ChatRequest
from router.shadow import Shadows
from router.state.cache import namespace_of
from router.state.controls import group_of
from router.state.responses import StoredResponse, new_response_id
from router.upstream.bridge import (
    ResponseEvents,
    ResponsesBridge,
    ResponsesRequest,
    conversation,
)

log = logging.getLogger("flashpro")

RESPONSES_PATH = "/v1/responses"
_RETRIEVE_PREFIX = RESPONSES_PATH + "/"


def is_responses_path(path: str) -> bool:
    return path == RESPONSES_PATH or path.startswith(_RETRIEVE_PREFIX)


def is_responses_body(body: bytes) -> bool:
    """Whether a JSON body is in the Responses format (`input`, no `messages`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "input" in data and "messages" not in data


def parse_responses(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> ResponsesRequest:
    """Validate a Responses body; every problem becomes a 400 in OpenAI's format."""
    return parse_json(body, ResponsesRequest, max_depth)


def chat_of(body: dict[str, Any]) -> ChatRequest:
    """The translated request as the pipeline takes it; a problem is the input's (400)."""
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise InvalidRequest(
            f"Invalid value for 'input': {error['msg']} (at {where} of the chat request)",
            param="input",
        ) from None


def namespace_for(deps: Deps, headers: Mapping[str, str]) -> str:
    """The caller's store namespace, once the policy has let the caller in (else 401)."""
    policy = deps.live.policy
    authorization = headers.get("authorization")
    key = bearer_digest(authorization)
    authorize(policy, Caller(key=key, group=group_of(policy, key, deps.controls.environ)))
    return namespace_of(authorization, policy.cache.tenants)


def ignored_header(request: ResponsesRequest) -> dict[str, str]:
    """`x-flashpro-ignored-tools`: the hosted tools the request declared, which no tier runs."""
    ignored = request.ignored_tools()
    return {"x-flashpro-ignored-tools": ",".join(sorted(set(ignored)))} if ignored else {}


class ResponsesEndpoint(Endpoint):
    """`/v1/responses` and `/v1/responses/{id}` as an ASGI callable."""

    def __init__(
        self,
        deps_of: Callable[[], Deps],
        max_body_bytes: int,
        max_json_depth: int = MAX_JSON_DEPTH,
        shadows: Shadows | None = None,
    ) -> None:
        super().__init__(deps_of, max_body_bytes, max_json_depth, shadows)
        self.bridge = ResponsesBridge()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        rid = request_id_for(headers.get("x-request-id"))
        exchange = Exchange(self.deps_of(), rid, api="responses")
        path = scope["path"]
        allowed = "POST" if path == RESPONSES_PATH else "GET"
        if scope["method"] != allowed:
            handle = _refuse(allowed)
        elif path == RESPONSES_PATH:
            handle = self._create(exchange, headers, receive, send)
        else:
            response_id = path.removeprefix(_RETRIEVE_PREFIX)
            handle = self._retrieve(exchange, headers, response_id, send)
        await serve(exchange, send, handle)

    async def _create(
        self, exchange: Exchange, headers: Mapping[str, str], receive: Receive, send: Send
    ) -> None:
        deps, rid = exchange.deps, exchange.request_id
        body = await read_body(receive, headers, self.max_body_bytes)
        request = parse_responses(body, self.max_json_depth)
        namespace = namespace_for(deps, headers)
        history = await self._history(deps, namespace, request)
        chat = chat_of(self.bridge.to_chat(request, history))
        routed = exchange.routed = await admit(deps, chat, headers, rid, api="responses")
        plan = cache_plan(deps, routed, headers)
        response_id = new_response_id()
        if request.stream:
            opened, whole = await open_stream(deps, routed, plan), list[dict[str, Any]]()
            model = opened.decision.model.split("/", 1)[-1]
            chunks = self.watched(routed, opened.chunks, whole)
            events = self.bridge.events(request, chunks, response_id, model)
            stream = self._sse(deps, namespace, request, history, events)
            extra = ignored_header(request)
            await send_stream(send, receive, stream, {**answer_headers(opened, rid), **extra})
            self.offer(routed, opened, whole[0] if whole else None)
            return
        answer = await complete(deps, routed, plan)
        out = self.bridge.from_chat(request, answer.body, response_id)
        await self._keep(deps, namespace, request, history, out)
        extra = {"x-flashpro-cost-usd": f"{answer.cost_usd:.8f}", **ignored_header(request)}
        await send_json(send, 200, out, {**extra, **answer_headers(answer, rid)})
        self.offer(routed, answer, answer.body)

    async def _retrieve(
        self, exchange: Exchange, headers: Mapping[str, str], response_id: str, send: Send
    ) -> None:
        deps = exchange.deps
        stored = await deps.responses.get(namespace_for(deps, headers), response_id)
        if stored is None:
            raise RouteNotFound(f"No response found with id '{clip(response_id)}'.")
        await send_json(send, 200, stored.response, {"x-flashpro-request-id": exchange.request_id})

    async def _history(
        self, deps: Deps, namespace: str, request: ResponsesRequest
    ) -> list[dict[str, Any]]:
        """The conversation `previous_response_id` continues; 400 when it is not stored."""
        if request.previous_response_id is None:
            return []
        stored = await deps.responses.get(namespace, request.previous_response_id)
        if stored is None:
            raise InvalidRequest(
                f"Previous response with id '{request.previous_response_id}' not found "
                "(unknown, expired, stored with store=false, or another caller's).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return stored.items

    async def _keep(
        self,
        deps: Deps,
        namespace: str,
        request: ResponsesRequest,
        history: list[dict[str, Any]],
        response: dict[str, Any],
    ) -> None:
        if request.store:
            items = conversation(request, history, response)
            await deps.responses.put(namespace, StoredResponse(response, items))

    async def _sse(
        self,
        deps: Deps,
        namespace: str,
        request: ResponsesRequest,
        history: list[dict[str, Any]],
        events: ResponseEvents,
    ) -> AsyncIterator[bytes]:
        """The events as server-sent events; a failure after the first byte ends the stream
        with `error` and `response.failed` (Responses streams have no `[DONE]`)."""
        try:
            async for event in events:
                yield named_event(event)
        except FlashproError as exc:
            for event in events.failure(exc.code, exc.message, exc.param):
                yield named_event(event)
            return
        if events.completed is not None:
            await self._keep(deps, namespace, request, history, events.completed)

    async def routable(self, deps: Deps, headers: Mapping[str, str], body: bytes) -> ChatRequest:
        """A Responses body as the chat request it would be routed as (POST /v1/route)."""
        request = parse_responses(body, self.max_json_depth)
        history = await self._history(deps, namespace_for(deps, headers), request)
        return chat_of(self.bridge.to_chat(request, history))


async def _refuse(allow: str) -> None:
    raise MethodNotAllowed("Method Not Allowed", headers={"allow": allow})
