"""HTTP edge for observing the router: /metrics (Prometheus), /v1/stats (the rolling aggregates
as JSON), /dashboard (a self-contained page drawing them) and POST /v1/feedback. With
`auth.required`, /metrics and /v1/stats take a monitoring key and feedback the client key that
made the rated request (router/http/access.py); the dashboard page itself holds no data and asks
for a key to fetch /v1/stats with. I/O."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any, cast

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from router.errors import InvalidRequest, RequestNotFound
from router.http.access import client_key, monitoring_key
from router.http.body import loads
from router.http.chat import read_body
from router.pipeline import Deps
from router.routing.callers import Caller
from router.routing.constrain import Spent
from router.shadow import Shadows
from router.state.controls import budget_scopes
from router.state.models import promotion
from router.state.store import StoreDown

FEEDBACK_MAX_BYTES = 64 * 1024

monitor = APIRouter()


def _deps(request: Request) -> Deps:
    return cast(Deps, request.app.state.deps)


@monitor.get("/metrics", dependencies=[Depends(monitoring_key)])
async def metrics(request: Request) -> Response:
    deps = _deps(request)
    metrics = deps.observer.metrics
    for tier in deps.live.policy.tiers:  # this process's breakers, as of the scrape
        metrics.breaker_state(tier, deps.resilience.circuit(tier).state)
    metrics.budget_remaining(await _budgets_now(deps), every_scope=True)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def _budgets_now(deps: Deps) -> list[Spent]:
    """The live policy's total and group budgets with their spend now (keys are not labelled)."""
    policy = deps.live.policy
    scopes = {
        scope: limit
        for group in (None, *policy.groups)
        for scope, limit in budget_scopes(policy, Caller(group=group))
    }
    if not scopes:
        return []
    amounts = await deps.controls.ledger.spent(list(scopes), deps.controls.now())
    return [
        Spent(scope, limit, day, month)
        for (scope, limit), (day, month) in zip(scopes.items(), amounts, strict=True)
    ]


@monitor.get("/v1/stats", dependencies=[Depends(monitoring_key)])
async def stats(request: Request) -> Response:
    deps = _deps(request)
    data = deps.observer.rolling.snapshot(time.time())
    data["policy_version"] = deps.live.version
    data["baseline_tier"] = deps.live.policy.observability.savings_baseline_tier
    data["calibration"] = await deps.controls.calibration.report(
        deps.live.policy, deps.live.thresholds
    )
    shadows: Shadows = request.app.state.shadows
    data["learning"] = await shadows.report(deps)
    data["classifier_version"] = deps.live.classifier_version
    data["learning"]["model"] = await model_figures(deps)
    return Response(orjson.dumps(data), media_type="application/json")


async def model_figures(deps: Deps) -> dict[str, Any]:
    """The live classifier: its version, a failed reload's error and, for a promoted one, the
    report that promoted it (held-out APGR before and after)."""
    version = deps.live.classifier_version
    try:
        report = await deps.models.report(version) if version.startswith("learned-") else None
    except StoreDown:
        report = None
    return {"version": version, "reload_error": deps.holder.model_error, **promotion(report)}


@monitor.get("/dashboard")
async def dashboard() -> HTMLResponse:
    page = resources.files("router").joinpath("data/dashboard.html").read_text("utf-8")
    return HTMLResponse(page)


def rating_of(body: Any) -> tuple[str, float]:
    """(request id, quality score in [0, 1]) from `{"request_id", "good": bool}` or `"score"`."""
    if not isinstance(body, dict):
        raise InvalidRequest("The feedback body must be a JSON object.")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        raise InvalidRequest("'request_id' must be the x-flashpro-request-id of an answer.")
    good, score = body.get("good"), body.get("score")
    if isinstance(good, bool) and score is None:
        return request_id, 1.0 if good else 0.0
    number = isinstance(score, int | float) and not isinstance(score, bool)
    if good is None and number and score is not None and 0 <= score <= 1:
        return request_id, float(score)
    raise InvalidRequest("Give either 'good' (true or false) or 'score' (a number in [0, 1]).")


@monitor.post("/v1/feedback")
async def feedback(request: Request, key: str | None = Depends(client_key)) -> Response:
    """Rate an answer; only the key that made the request may (404 for any other)."""
    log = _deps(request).observer.decision_log
    headers = {k.lower(): v for k, v in request.headers.items()}
    request_id, score = rating_of(
        loads(await read_body(request.receive, headers, FEEDBACK_MAX_BYTES))
    )
    if log is None:
        raise InvalidRequest(
            "Feedback needs a decision log: set observability.decision_log.path in the policy."
        )
    if not log.feedback(request_id, score, key):
        raise RequestNotFound("No answer with this request id was made with this API key.")
    content = {"status": "recorded", "request_id": request_id, "score": score}
    return Response(orjson.dumps(content), status_code=202, media_type="application/json")
