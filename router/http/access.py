"""Who may call which endpoint, as FastAPI dependencies: with `auth.required`, the monitoring
endpoints take a monitoring key, /v1/models a monitoring or a client key, /v1/route and
/v1/feedback a client key (router/routing/auth.py decides). Checked before any body is read.
Reads the request's headers only."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from router.pipeline import Deps
from router.routing.auth import authorize_client_key, authorize_monitoring
from router.routing.callers import bearer_digest


def _deps(request: Request) -> Deps:
    return cast(Deps, request.app.state.deps)


def key_of(request: Request) -> str | None:
    """The sha256 of the caller's bearer key, if it sent one."""
    return bearer_digest(request.headers.get("authorization"))


def monitoring_key(request: Request) -> None:
    """Dependency of the monitoring endpoints (401 without a monitoring key, when locked)."""
    deps = _deps(request)
    authorize_monitoring(deps.live.policy, key_of(request), deps.controls.environ)


def any_key(request: Request) -> None:
    """Dependency of /v1/models: a monitoring or a client key, when locked."""
    deps = _deps(request)
    authorize_monitoring(deps.live.policy, key_of(request), deps.controls.environ, True)


def client_key(request: Request) -> str | None:
    """Dependency of the client endpoints: the caller's key digest (401 without a client key,
    when locked), checked before any body is read."""
    deps = _deps(request)
    key = key_of(request)
    authorize_client_key(deps.live.policy, key, deps.controls.environ)
    return key
