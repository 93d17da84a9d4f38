"""HTTP edge: the OpenAI-compatible endpoints, health checks and decision headers. I/O."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from router.cache import CacheStatus
from router.decide import Decision
from router.errors import FlashproError, InvalidRequest, PayloadTooLarge
from router.pipeline import (
    Answer,
    Deps,
    StreamAnswer,
    admit,
    cache_plan,
    check_key,
    complete,
    open_stream,
    route,
)
from router.schemas import ChatRequest

api = APIRouter()

_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def deps_of(request: Request) -> Deps:
    return cast(Deps, request.app.state.deps)


def request_id_of(request: Request) -> str:
    """The client's x-request-id when it is short and plain, else a new one."""
    existing: str | None = getattr(request.state, "request_id", None)
    if existing is not None:
        return existing
    given = request.headers.get("x-request-id", "")
    rid = given if 0 < len(given) <= 64 and set(given) <= _REQUEST_ID_OK else uuid.uuid4().hex
    request.state.request_id = rid
    return rid


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


async def read_chat(request: Request, limit: int) -> ChatRequest:
    """Read and validate a chat body; every problem becomes a 400 or 413 in OpenAI's format."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
        parts.append(part)
    try:
        data = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        raise InvalidRequest(f"Invalid value for '{param}': {error['msg']}", param=param) from None


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


def lower_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


@api.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    deps = deps_of(request)
    rid = request_id_of(request)
    chat = await read_chat(request, request.app.state.settings.max_body_bytes)
    given = lower_headers(request)
    routed = await admit(deps, chat, given, rid)
    request.state.routed = routed  # for the failure's log line and metrics (router/app.py)
    plan = cache_plan(deps, routed, given)
    if chat.stream:
        opened = await open_stream(deps, routed, plan)
        return StreamingResponse(
            sse(opened.chunks), media_type="text/event-stream", headers=answer_headers(opened, rid)
        )
    answer = await complete(deps, routed, plan)
    headers = {"x-flashpro-cost-usd": f"{answer.cost_usd:.8f}", **answer_headers(answer, rid)}
    return json_response(answer.body, headers=headers)


def answer_headers(answer: Answer | StreamAnswer, request_id: str) -> dict[str, str]:
    """The decision, cache and fallback headers of an answer (a hit's cost header says 0)."""
    headers = decision_headers(answer.decision, request_id)
    headers.update(cache_headers(answer.cache, answer.saved_usd))
    headers.update(answer.trail.headers())
    return headers


async def sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events; an upstream failure mid-stream becomes an error event, then [DONE]."""
    try:
        async for data in chunks:
            yield b"data: " + orjson.dumps(data) + b"\n\n"
    except FlashproError as exc:
        yield b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"
    yield b"data: [DONE]\n\n"


@api.post("/v1/route")
async def explain_route(request: Request) -> Response:
    deps = deps_of(request)
    rid = request_id_of(request)
    chat = await read_chat(request, request.app.state.settings.max_body_bytes)
    given = lower_headers(request)
    check_key(deps, chat, given)
    routed = route(deps, chat, given)
    decision = routed.decision
    body = {
        "alias": decision.alias,
        "tier": decision.tier,
        "model": decision.model.split("/", 1)[-1],
        "thinking": decision.thinking,
        "reasoning_effort": decision.reasoning_effort,
        "score": decision.score,
        "reasoning": routed.assessment.reasoning,
        "prompt_tokens": routed.assessment.prompt_tokens,
        "rule": decision.rule,
        "reason": decision.reason,
        "policy_version": routed.routing.version if routed.routing else None,
    }
    return json_response(body, headers=decision_headers(decision, rid))


@api.get("/v1/models")
async def list_models(request: Request) -> Response:
    policy = deps_of(request).live.policy
    created = int(request.app.state.started_at)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "flashpro",
            "description": alias.description,
        }
        for name, alias in policy.aliases.items()
    ] + [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "deepseek",
            "description": f"{tier.model_name}, thinking {tier.thinking}"
            + (f", effort {tier.reasoning_effort}" if tier.reasoning_effort else ""),
        }
        for name, tier in policy.tiers.items()
    ]
    return json_response({"object": "list", "data": data})


@api.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@api.get("/readyz")
async def readyz(request: Request) -> Response:
    deps = deps_of(request)
    cache_ok = await deps.cache.backend.reachable()
    body = {
        # Redis is an optimisation (cache, shared ledgers): without it flashpro still serves,
        # so readiness stays 200 and says it is degraded.
        "status": "ready" if cache_ok else "degraded",
        "checks": {"cache": "ok" if cache_ok else "unreachable"},
        "policy_version": deps.live.version,
        "policy_reload_error": deps.holder.last_error,
        "uptime_s": round(time.time() - request.app.state.started_at, 1),
    }
    return json_response(body)
