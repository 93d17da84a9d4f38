"""HTTP edge: the endpoints besides chat completions (router/http/chat.py): route explanation, the
model list and health checks. I/O."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from router.http.chat import decision_headers, parse_chat, read_body, request_id_for
from router.pipeline import Deps, preview
from router.schemas import ChatRequest

api = APIRouter()


def deps_of(request: Request) -> Deps:
    return cast(Deps, request.app.state.deps)


def request_id_of(request: Request) -> str:
    """The client's x-request-id when it is short and plain, else a new one (kept per request)."""
    existing: str | None = getattr(request.state, "request_id", None)
    if existing is None:
        existing = request.state.request_id = request_id_for(request.headers.get("x-request-id"))
    return existing


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def lower_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def read_chat(request: Request, limit: int) -> ChatRequest:
    """Read and validate a chat body (the same reader as the chat endpoint's)."""
    return parse_chat(await read_body(request.receive, lower_headers(request), limit))


@api.post("/v1/route")
async def explain_route(request: Request) -> Response:
    deps = deps_of(request)
    rid = request_id_of(request)
    chat = await read_chat(request, request.app.state.settings.max_body_bytes)
    given = lower_headers(request)
    routed = await preview(deps, chat, given)
    decision = routed.decision
    body = {
        "alias": decision.alias,
        "tier": decision.tier,
        "model": decision.model.split("/", 1)[-1],
        "thinking": decision.thinking,
        "reasoning_effort": decision.reasoning_effort,
        "score": decision.score,
        "reasoning": routed.assessment.reasoning,
        "difficulty": routed.assessment.difficulty,
        "gain": routed.assessment.gain,
        "reasons": list(routed.assessment.reasons),
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
