"""The first step of a request: classify and decide under the live limits (budgets, share cap,
latency, caller group), after the caller's key, caps and rates are checked. Does I/O through
the injected controls and rate limiter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from router.pipeline import Deps
from router.routing.auth import authorize
from router.routing.callers import Caller
from router.routing.constrain import NO_STATE, RoutingState
from router.routing.decide import decide
from router.routing.decision import facts_of
from router.routing.policy import Policy
from router.routing.routed import Routed, Routing
from router.schemas import ChatRequest
from router.schemas_anthropic import MessagesRequest
from router.state.controls import caller_of
from router.state.ratelimit import check_shape, limits_for


def route(
    deps: Deps,
    request: ChatRequest,
    headers: Mapping[str, str],
    state: RoutingState = NO_STATE,
    routing: Routing | None = None,
    caller: Caller | None = None,
    request_id: str = "",
) -> Routed:
    """Classify and decide, without calling the upstream (also serves POST /v1/route). The
    assessment is kept on the request per classifier object: a swapped-in model scores anew."""
    routing = routing or deps.live
    classifier = routing.classifier
    assessment = request.derived("assessment", classifier.assess, classifier)
    facts = facts_of(request, headers, assessment.prompt_tokens)
    decision = decide(routing.policy, routing.thresholds, facts, assessment, state)
    return Routed(request, assessment, decision, routing, caller or Caller(), headers, request_id)


async def admit(
    deps: Deps,
    request: ChatRequest,
    headers: Mapping[str, str],
    request_id: str = "",
    *,
    api: str = "chat",
    anthropic: MessagesRequest | None = None,
) -> Routed:
    """Route under the live limits (budgets, share cap, latency, caller group), then count the
    request toward the share window. A front door relaying another wire format passes its
    parsed body as well (`anthropic`), and `request` is its chat view."""
    routing = deps.live
    caller = caller_of(routing.policy, request, headers, deps.controls.environ)
    await guard(deps, routing.policy, caller, request)
    state = await deps.controls.state_for(routing.policy, caller)
    if state.spent:
        deps.observer.metrics.budget_remaining(state.spent)
    routed = route(deps, request, headers, state, routing, caller, request_id)
    if api != "chat" or anthropic is not None:
        routed = replace(routed, api=api, anthropic=anthropic)
    routed = await deps.controls.reserve(routed, state)  # its expected cost, until charged
    await deps.controls.admitted(routing.policy, caller, routed.decision)
    return routed


async def preview(deps: Deps, request: ChatRequest, headers: Mapping[str, str]) -> Routed:
    """How `admit` would route the request now, under the live limits (budgets, share cap,
    latency, caller group), without counting it anywhere (POST /v1/route). 401 for a caller
    the policy refuses."""
    routing = deps.live
    caller = caller_of(routing.policy, request, headers, deps.controls.environ)
    authorize(routing.policy, caller)
    state = await deps.controls.state_for(routing.policy, caller)
    return route(deps, request, headers, state, routing, caller)


async def guard(deps: Deps, policy: Policy, caller: Caller, request: ChatRequest) -> None:
    """Authenticate the caller (401), then hold the request to its caps (400) and its key's
    per-minute rates (429); see router/routing/auth.py and router/state/ratelimit.py."""
    authorize(policy, caller)
    limits = limits_for(policy, caller.group)
    check_shape(limits, request)
    await deps.rates.admit(limits, caller.key)
