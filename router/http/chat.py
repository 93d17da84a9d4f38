"""HTTP edge for `POST /v1/chat/completions`, the hot path, as a bare ASGI handler. I/O.

Every proxied request and cache hit comes through here, so it skips the framework's routing,
dependency and response layers (`FlashproApp` in router/app.py sends this one path here and
everything else to FastAPI): it reads the body, runs the pipeline and writes the answer with
raw ASGI messages. Errors are rendered here, in OpenAI's format, as router/app.py does for the
other endpoints. A stream is cancelled as soon as its client disconnects.

Identical bodies (a hot prompt, a retried request) are parsed once: `Intake` keeps the
validated request of recent bodies by digest, and the pipeline memoises what it derives from a
request object (assessment, cache digest), so a repeated request skips straight to the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from router.admission import admit
from router.errors import (
    FlashproError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    clip,
    internal_error,
)
from router.http.body import MAX_JSON_DEPTH, loads
from router.http.streaming import ClientLink, sse
from router.pipeline import (
    Answer,
    Deps,
    StreamAnswer,
    cache_plan,
    complete,
    observe,
    open_stream,
)
from router.routing.decision import Decision
from router.routing.routed import Routed
from router.schemas import ChatRequest
from router.shadow import Shadows
from router.state.cache import CachePlan, CacheStatus

log = logging.getLogger("flashpro")
M = TypeVar("M", bound=BaseModel)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHAT_PATH = "/v1/chat/completions"
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_JSON = (b"content-type", b"application/json")
_ids = itertools.count()
_ID_PREFIX = os.urandom(6).hex()  # per process: ids stay unique across workers


def request_id_for(given: str | None) -> str:
    """The client's x-request-id when it is short and plain, else a new unique one."""
    if given and len(given) <= 64 and set(given) <= _REQUEST_ID_OK:
        return given
    return f"{_ID_PREFIX}{next(_ids):08x}"


def headers_of(scope: Scope) -> dict[str, str]:
    """Request headers with lower-case names (the last of repeated ones wins)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


class ClientGone(FlashproError):
    """The client disconnected before its request body arrived (nobody reads the answer)."""

    status = 499
    type = "invalid_request_error"
    default_code = "client_disconnected"


def too_large(limit: int) -> PayloadTooLarge:
    """A 413 that also closes the connection: the rest of the body is not worth reading."""
    message = f"The request body is over the {limit}-byte limit."
    return PayloadTooLarge(message, headers={"connection": "close"})


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body, refused with a 413 beyond `limit` bytes (declared or sent)."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and message["type"] == "http.request":
        if len(body) > limit:
            raise too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        if message["type"] == "http.disconnect":
            raise ClientGone("The client disconnected while sending its request.")
        if not message.get("more_body", False):
            return b"".join(parts)
        message = await receive()
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise too_large(limit)
        parts.append(part)


def first_error(errors: list[ErrorDetails]) -> ErrorDetails:
    return errors[0]


def parse_json(
    body: bytes,
    model: type[M],
    max_depth: int = MAX_JSON_DEPTH,
    pick: Callable[[list[ErrorDetails]], ErrorDetails] = first_error,
) -> M:
    """Validate a JSON body as `model`; every problem becomes a 400 naming the field (the error
    `pick` chooses among pydantic's; nesting deeper than `max_depth` included), echoing at most
    a bounded part of the client's input."""
    data = loads(body, max_depth)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = pick(exc.errors(include_url=False))
        param = clip(".".join(str(p) for p in error["loc"])) or None
        reason = clip(str(error["msg"]).removeprefix("Value error, "))
        raise InvalidRequest(f"Invalid value for '{param}': {reason}", param=param) from None


def parse_chat(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> ChatRequest:
    """Validate a chat body; every problem becomes a 400 in OpenAI's format."""
    return parse_json(body, ChatRequest, max_depth)


class Intake:
    """Parsed requests of recently seen bodies, by digest: bodies up to `max_body` bytes, at
    most `entries` of them and `max_bytes` of body in all (oldest out first).

    The pipeline never mutates a request, so one parsed object can serve every identical body;
    invalid bodies are not kept (their error is raised each time)."""

    def __init__(
        self,
        entries: int = 1024,
        max_body: int = 16 * 1024,
        max_bytes: int = 4 * 1_048_576,
        max_depth: int = MAX_JSON_DEPTH,
    ) -> None:
        self.entries = entries
        self.max_depth = max_depth
        self.max_body = max_body
        self.max_bytes = max_bytes
        self.bytes = 0
        self._seen: OrderedDict[bytes, tuple[ChatRequest, int]] = OrderedDict()

    def parse(self, body: bytes) -> ChatRequest:
        if len(body) > self.max_body:
            return parse_chat(body, self.max_depth)
        digest = hashlib.blake2b(body, digest_size=16).digest()
        seen = self._seen.get(digest)
        if seen is not None:
            return seen[0]
        request = parse_chat(body, self.max_depth)
        self._seen[digest] = (request, len(body))
        self.bytes += len(body)
        while len(self._seen) > self.entries or self.bytes > self.max_bytes:
            self.bytes -= self._seen.popitem(last=False)[1][1]  # the oldest
        return request


def decision_headers(decision: Decision, request_id: str) -> dict[str, str]:
    return {
        "x-flashpro-tier": decision.tier,
        "x-flashpro-model": decision.model.split("/", 1)[-1],
        "x-flashpro-score": f"{decision.score:.4f}",
        "x-flashpro-rule": decision.rule,
        "x-flashpro-request-id": request_id,
    }


def cache_headers(status: CacheStatus, saved_usd: float) -> dict[str, str]:
    """x-flashpro-cache; a hit costs nothing and reports what it saved."""
    if status != "hit":
        return {"x-flashpro-cache": status}
    return {
        "x-flashpro-cache": status,
        "x-flashpro-cost-usd": "0",
        "x-flashpro-cache-saved-usd": f"{saved_usd:.8f}",
    }


def answer_headers(answer: Answer | StreamAnswer, request_id: str) -> dict[str, str]:
    """The decision, cache and fallback headers of an answer (a hit's cost header says 0)."""
    headers = decision_headers(answer.decision, request_id)
    headers.update(cache_headers(answer.cache, answer.saved_usd))
    headers.update(answer.trail.headers())
    return headers


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def send_json(send: Send, status: int, body: Any, headers: Mapping[str, str]) -> None:
    data = orjson.dumps(body)
    raw = [_JSON, (b"content-length", str(len(data)).encode()), *_raw(headers)]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def send_stream(
    send: Send, receive: Receive, events: AsyncIterator[bytes], headers: Mapping[str, str]
) -> None:
    """Write the events as they come, for an edge that does not watch its client already: a
    client that disconnects stops the stream at once (the upstream stream is closed and the
    request is observed as cut, 499); a shutdown ends it with an error event."""
    link = ClientLink(send, receive)
    link.watch()
    try:
        await link.stream(events, headers)
    except asyncio.CancelledError:
        if not link.left():
            raise
    finally:
        link.close()


@dataclass(slots=True)
class Exchange:
    """One request at an edge: its dependencies, its id, and its routing once admitted (so a
    failure is observed with the decision it had)."""

    deps: Deps
    request_id: str
    routed: Routed | None = None
    api: str = "chat"  # the front door, for metrics and logs
    link: ClientLink | None = None  # the client, watched once its body is read

    def gone(self) -> bool:
        """After a cancellation: whether the client left (else the server is shutting down)."""
        return self.link is not None and self.link.gone


# How an edge renders an error: (the error, the request id) -> body. OpenAI's envelope unless
# the edge speaks another format (router/http/messages.py).
ErrorBody = Callable[[FlashproError, str], dict[str, Any]]


def openai_error(error: FlashproError, request_id: str) -> dict[str, Any]:
    return error.envelope()


async def serve(
    exchange: Exchange,
    send: Send,
    handle: Awaitable[None],
    error_body: ErrorBody = openai_error,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Run an edge's handler; a failure becomes one observation and one error in the edge's
    format, with `headers` added (the last-resort handler logs and answers a generic 500
    without the cause). A client that disconnects cancels the handler (once it watches the
    client): the pipeline records what it charged, and nothing more is sent."""
    deps, rid, api = exchange.deps, exchange.request_id, exchange.api
    out = {**(headers or {}), "x-flashpro-request-id": rid}
    try:
        await handle
    except ClientGone:
        observe(
            deps, exchange.routed, request_id=rid, status=499, error="client_disconnected", api=api
        )
    except FlashproError as exc:
        error = exc.code or "error"
        observe(deps, exchange.routed, request_id=rid, status=exc.status, error=error, api=api)
        if exc.status >= 500:
            log.warning("request %s failed: %s", rid, exc.message)
        await _failed(exchange, send, exc, error_body(exc, rid), {**exc.headers, **out})
    except asyncio.CancelledError:
        link = exchange.link
        if link is None or not link.left():
            raise  # the server is shutting down
        if exchange.routed is None:  # else the pipeline recorded it, with what it charged
            observe(deps, None, request_id=rid, status=499, error="client_disconnected", api=api)
    except Exception as exc:
        log.exception("request %s: unexpected error", rid, exc_info=exc)
        observe(deps, exchange.routed, request_id=rid, status=500, error="internal_error", api=api)
        internal = internal_error(rid)
        await _failed(exchange, send, internal, error_body(internal, rid), out)
    finally:
        if exchange.link is not None:
            exchange.link.close()


async def _failed(
    exchange: Exchange,
    send: Send,
    error: FlashproError,
    body: dict[str, Any],
    headers: Mapping[str, str],
) -> None:
    """The error as a status, or as an event when a stream was committed already (the
    upstream kept it queued, and the client got keep-alives)."""
    link = exchange.link
    if link is not None:
        link.close()
        if link.started:
            await link.fail(error)
            return
    await send_json(send, error.status, body, headers)


class Endpoint:
    """What every front door's ASGI callable holds: how to find the app's dependencies, the
    body's caps, and the shadow comparisons each whole answer is offered to once it is sent."""

    def __init__(
        self,
        deps_of: Callable[[], Deps],
        max_body_bytes: int,
        max_json_depth: int = MAX_JSON_DEPTH,
        shadows: Shadows | None = None,
    ) -> None:
        self.deps_of = deps_of
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.shadows = shadows

    def watched(
        self, routed: Routed, chunks: AsyncIterator[dict[str, Any]], whole: list[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        """The stream as the client gets it; with learning on, also assembled into `whole`."""
        return chunks if self.shadows is None else self.shadows.watch(routed, chunks, whole)

    def offer(
        self, routed: Routed, answered: Answer | StreamAnswer, body: dict[str, Any] | None
    ) -> None:
        """Offer a whole answer the client has (None: the stream did not end whole)."""
        if self.shadows is not None and body is not None:
            self.shadows.offer(routed, answered.cache, answered.trail, body)


class ChatEndpoint(Endpoint):
    """`/v1/chat/completions` as an ASGI callable; `deps_of` finds the app's dependencies."""

    def __init__(
        self,
        deps_of: Callable[[], Deps],
        max_body_bytes: int,
        max_json_depth: int = MAX_JSON_DEPTH,
        shadows: Shadows | None = None,
    ) -> None:
        super().__init__(deps_of, max_body_bytes, max_json_depth, shadows)
        self.intake = Intake(max_depth=max_json_depth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        exchange = Exchange(self.deps_of(), request_id_for(headers.get("x-request-id")))
        await serve(exchange, send, self._answer(exchange, scope, headers, receive, send))

    async def _answer(
        self,
        exchange: Exchange,
        scope: Scope,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
    ) -> None:
        deps, rid = exchange.deps, exchange.request_id
        if scope["method"] != "POST":
            raise MethodNotAllowed("Method Not Allowed: use POST", headers={"allow": "POST"})
        body = await read_body(receive, headers, self.max_body_bytes)
        link = exchange.link = ClientLink(send, receive)
        link.watch()  # from here on, a client that leaves cancels the work
        chat = self.intake.parse(body)
        routed = exchange.routed = await admit(deps, chat, headers, rid)
        plan = cache_plan(deps, routed, headers)
        if chat.stream:
            waiting = link.keep_alive(lambda: _routing_headers(routed, plan, rid))
            opened = await open_stream(deps, routed, plan, waiting, exchange.gone)
            whole: list[dict[str, Any]] = []
            chunks = self.watched(routed, opened.chunks, whole)
            await link.stream(sse(chunks), answer_headers(opened, rid))
            self.offer(routed, opened, whole[0] if whole else None)
            return
        answer = await complete(deps, routed, plan, exchange.gone)
        out = {"x-flashpro-cost-usd": f"{answer.cost_usd:.8f}", **answer_headers(answer, rid)}
        link.close()
        await send_json(send, 200, answer.body, out)
        self.offer(routed, answer, answer.body)


def _routing_headers(routed: Routed, plan: CachePlan, rid: str) -> dict[str, str]:
    """A stream's headers before it is known which tier will answer: the first one tried."""
    return {**decision_headers(routed.decision, rid), "x-flashpro-cache": plan.status}
