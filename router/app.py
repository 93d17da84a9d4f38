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

from router.api import api, json_response, request_id_of
from router.classify import load_classifier
from router.errors import FlashproError, InvalidRequest, RouteNotFound, internal_error_envelope
from router.pipeline import Deps, Routing
from router.policy import load_policy
from router.reasoning import ReasoningMemory
from router.settings import Settings
from router.upstream import LiteLLMUpstream

log = logging.getLogger("flashpro")


def build_deps(settings: Settings) -> Deps:
    """The production dependencies: policy, shipped classifier, litellm upstream."""
    policy, version = load_policy(settings.policy)
    classifier = load_classifier(settings.classifier)
    routing = Routing.build(policy, version, classifier.threshold_for_share, os.environ)
    secrets = tuple(key for key in routing.keys.values() if key)
    return Deps(
        routing=routing,
        classifier=classifier,
        upstream=LiteLLMUpstream(secrets=secrets),
        memory=ReasoningMemory(),
        api_base=settings.deepseek_api_base,
    )


def create_app(settings: Settings | None = None, deps: Deps | None = None) -> FastAPI:
    """The flashpro app. Tests pass their own `deps`; production builds them at start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.deps = deps or build_deps(settings)
        routing = app.state.deps.routing
        log.info("flashpro ready: policy %s, tiers %s", routing.version, ", ".join(routing.policy.tiers))
        yield

    app = FastAPI(title="flashpro", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.started_at = time.time()
    app.include_router(api)
    app.add_exception_handler(FlashproError, _flashpro_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (`router.app:app_from_env`), used so `--workers N` can re-create the app."""
    return create_app(Settings())


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
    error = RouteNotFound(str(exc.detail), status=exc.status_code)
    return await _flashpro_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    rid = request_id_of(request)
    log.exception("request %s: unexpected error", rid, exc_info=exc)
    return json_response(internal_error_envelope(rid), 500, {"x-flashpro-request-id": rid})
