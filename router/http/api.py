"""HTTP edge: the endpoints besides the proxied ones (router/http/chat.py, messages.py,
responses.py): route explanation (of a chat, Messages or Responses body), the model list and
health checks. With `auth.required` each takes a key (`/healthz` excepted): a client key for
/v1/route, a monitoring key for /readyz, either for /v1/models. I/O."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from router.admission import preview
from router.http.access import any_key, client_key, monitoring_key
from router.http.chat import decision_headers, parse_chat, read_body, request_id_for
from router.http.messages import is_messages_body
from router.http.messages import routable as routable_message
from router.http.responses import is_responses_body
from router.pipeline import Deps
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


async def read_routable(request: Request, deps: Deps) -> ChatRequest:
    """Read and validate a chat body, a Responses body as the chat request it becomes, or a
    Messages body as its chat view (the same readers and limits as those endpoints')."""
    settings = request.app.state.settings
    given = lower_headers(request)
    body = await read_body(request.receive, given, settings.max_body_bytes)
    if is_responses_body(body):
        chat: ChatRequest = await request.app.responses.routable(deps, given, body)
        return chat
    if is_messages_body(body, given):
        return routable_message(body, settings.max_json_depth)
    return parse_chat(body, settings.max_json_depth)


@api.post("/v1/route", dependencies=[Depends(client_key)])
async def explain_route(request: Request) -> Response:
    deps = deps_of(request)
    rid = request_id_of(request)
    chat = await read_routable(request, deps)
    routed = await preview(deps, chat, lower_headers(request))
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


@api.get("/v1/models", dependencies=[Depends(any_key)])
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


@api.get("/")
async def root() -> Response:
    """What runs here, for a person who opens the address in a browser."""
    endpoints = {
        "chat": "/v1/chat/completions",
        "models": "/v1/models",
        "route": "/v1/route",
        "dashboard": "/dashboard",
        "stats": "/v1/stats",
        "metrics": "/metrics",
        "health": "/healthz",
        "ready": "/readyz",
    }
    body = {
        "service": "flashpro",
        "about": "OpenAI-compatible routing proxy for DeepSeek V4: point an OpenAI client's "
        "base_url at /v1 and send model='auto'.",
        "endpoints": endpoints,
    }
    return json_response(body)


@api.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@api.get("/readyz", dependencies=[Depends(monitoring_key)])
async def readyz(request: Request) -> Response:
    deps = deps_of(request)
    cache_ok = await deps.cache.backend.reachable()
    body = {
        # Redis is an optimisation (cache, shared ledgers): without it flashpro still serves,
        # so readiness stays 200 and says it is degraded.
        "status": "ready" if cache_ok else "degraded",
        "checks": {"cache": "ok" if cache_ok else "unreachable"},
        "policy_version": deps.live.version,
        # which file is live: None is the default embedded in the package
        "policy_file": str(request.app.state.settings.policy or "") or None,
        "policy_reload_error": deps.holder.last_error,
        "classifier_version": deps.live.classifier_version,
        "classifier_reload_error": deps.holder.model_error,
        "uptime_s": round(time.time() - request.app.state.started_at, 1),
    }
    return json_response(body)
