"""Build the ASGI app: the lifespan wires the dependencies; errors are rendered here, once."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from router.errors import (
    FlashproError,
    InvalidRequest,
    MethodNotAllowed,
    RouteNotFound,
    internal_error_envelope,
)
from router.http.api import api, json_response, request_id_of
from router.http.chat import CHAT_PATH, ChatEndpoint, Receive, Scope, Send
from router.http.messages import PATHS as MESSAGES_PATHS
from router.http.messages import MessagesEndpoint
from router.http.monitor import monitor
from router.http.reload import ModelReloader, hot_reload
from router.http.responses import ResponsesEndpoint, is_responses_path
from router.observe.logs import configure_access_log
from router.observe.observer import Observer
from router.pipeline import Deps
from router.routing.classify import load_versioned
from router.routing.policy import Policy, load_policy
from router.routing.routed import Routing
from router.settings import Settings
from router.shadow import Shadows
from router.state.controls import open_controls
from router.state.labels import open_label_store
from router.state.models import open_models
from router.state.near import open_cache
from router.state.ratelimit import open_rate_limiter
from router.state.reasoning import open_reasoning
from router.state.responses import open_response_store
from router.state.store import open_store
from router.upstream.client import ClientLimits
from router.upstream.transport import open_upstream

log = logging.getLogger("flashpro")


def _client_limits(settings: Settings) -> ClientLimits:
    return ClientLimits(
        max_connections=settings.upstream_max_connections,
        per_origin=settings.upstream_max_connections_per_origin,
    )


def build_deps(settings: Settings) -> Deps:
    """The production dependencies: policy, shipped classifier, the configured upstream."""
    policy, version = load_policy(settings.policy)
    classifier, classifier_version = load_versioned(settings.classifier)
    routing = Routing.build(policy, version, classifier, os.environ, classifier_version)
    secrets = tuple(key for key in routing.keys.values() if key)
    shared = open_store(settings.redis_url)  # the shared state behind one breaker (not the cache)
    return Deps(
        routing=routing,
        upstream=open_upstream(settings.transport, secrets, _client_limits(settings)),
        memory=open_reasoning(shared),
        api_base=settings.deepseek_api_base,
        anthropic_api_base=settings.deepseek_anthropic_api_base,
        cache=open_cache(settings.redis_url, policy.cache),
        controls=open_controls(shared, os.environ, routing.upstreams(settings.deepseek_api_base)),
        rates=open_rate_limiter(shared),
        observer=Observer.for_policy(policy),
        responses=open_response_store(
            settings.redis_url,
            settings.responses_ttl_seconds,
            settings.responses_max_entry_bytes,
        ),
        labels=open_label_store(settings.redis_url),
        models=open_models(settings.redis_url),
    )


class FlashproApp(FastAPI):
    """FastAPI for every endpoint but the proxied ones: chat completions, Anthropic messages and
    responses go straight to their bare ASGI handlers (router/http/chat.py, messages.py,
    responses.py), past the framework's routing and response layers."""

    chat: ChatEndpoint
    messages: MessagesEndpoint
    responses: ResponsesEndpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH:
            await self.chat(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] in MESSAGES_PATHS:
            await self.messages(scope, receive, send)
        elif scope["type"] == "http" and is_responses_path(scope["path"]):
            await self.responses(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, deps: Deps | None = None) -> FlashproApp:
    """The flashpro app. Tests pass their own `deps`; production builds them at start-up."""
    settings = settings or Settings()
    shadows = Shadows(lambda: app.state.deps)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.deps = deps or build_deps(settings)
        routing = app.state.deps.routing
        log.info(
            "flashpro ready: policy %s, classifier %s, tiers %s",
            routing.version,
            routing.classifier_version,
            ", ".join(routing.policy.tiers),
        )
        live: Deps = app.state.deps

        def rebuild(policy: Policy, version: str) -> Routing:
            return live.live.with_policy(policy, version, os.environ)  # keeps the live model

        started = (live.routing.classifier, live.routing.classifier_version)
        models = ModelReloader(live.holder, live.models, started, os.environ)
        reloading = hot_reload(
            live.holder, settings.policy, rebuild, settings.policy_poll_seconds, models
        )
        async with reloading, live.observer.running():  # the decision log flushes in between
            yield
        await shadows.aclose()  # comparisons in flight are cancelled, and counted
        await app.state.deps.cache.aclose()
        await live.controls.aclose()
        await live.memory.aclose()
        await live.rates.aclose()
        await live.responses.aclose()
        await live.labels.aclose()
        await live.models.aclose()
        close_upstream = getattr(live.upstream, "aclose", None)
        if close_upstream is not None:  # the direct transport's connection pool
            await close_upstream()

    app = FlashproApp(title="flashpro", version="0.1.0", lifespan=lifespan)
    app.chat = ChatEndpoint(
        lambda: app.state.deps,
        settings.max_body_bytes,
        settings.max_json_depth,
        shadows,
    )
    app.messages = MessagesEndpoint(
        lambda: app.state.deps, settings.max_body_bytes, settings.max_json_depth, shadows
    )
    app.responses = ResponsesEndpoint(
        lambda: app.state.deps, settings.max_body_bytes, settings.max_json_depth, shadows
    )
    app.state.settings = settings
    app.state.shadows = shadows
    app.state.started_at = time.time()
    app.include_router(api)
    app.include_router(monitor)
    app.add_exception_handler(FlashproError, _flashpro_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def app_from_env() -> FlashproApp:
    """uvicorn factory (`router.app:app_from_env`), used so `--workers N` can re-create the app."""
    settings = Settings()
    if settings.access_log:  # in the factory: every worker process sets up its own logging
        configure_access_log()
    return create_app(settings)


async def _flashpro_error(request: Request, exc: FlashproError) -> Response:
    headers = {**exc.headers, "x-flashpro-request-id": request_id_of(request)}
    if exc.status >= 500:
        log.warning("request %s failed: %s", headers["x-flashpro-request-id"], exc.message)
    return json_response(exc.envelope(), exc.status, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ()))
    return await _flashpro_error(request, InvalidRequest(str(first.get("msg")), param=param))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    headers = dict(exc.headers or {})  # a 405 says which methods the endpoint takes
    if exc.status_code == 405:
        error: FlashproError = MethodNotAllowed(str(exc.detail), headers=headers)
    elif exc.status_code == 404:
        error = RouteNotFound(str(exc.detail), headers=headers)
    else:
        error = FlashproError(str(exc.detail), status=exc.status_code, headers=headers)
    return await _flashpro_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    rid = request_id_of(request)
    log.exception("request %s: unexpected error", rid, exc_info=exc)
    return json_response(internal_error_envelope(rid), 500, {"x-flashpro-request-id": rid})
