"""The record of one finished request: what happened to it, what it cost and saved, built once
by `record_of` for the metrics, logs, rolling aggregates and decision log. Pure: no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from router.routing.cost import Usage, cost_usd
from router.routing.decision import Decision
from router.routing.policy import Observability, Policy
from router.routing.routed import Routed
from router.schemas import ChatRequest

NO_USAGE = Usage()


@dataclass(slots=True)  # not frozen: a frozen __init__ sets each field via object.__setattr__
class RequestRecord:
    """What happened to one request, built once when it finished (or failed)."""

    request_id: str
    status: int  # the HTTP status the client got
    decision: Decision | None  # None when the request failed before it was routed
    options: Observability = field(default_factory=Observability)
    error: str | None = None  # the OpenAI error code, on failure
    cache: str = "bypass"  # hit | miss | bypass
    tenant: str = "anonymous"  # group name, else a prefix of the key's hash
    group: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    baseline_usd: float = 0.0  # the same usage priced at the savings baseline tier
    latency_ms: float = 0.0  # admission to the end of the answer
    upstream_ms: float | None = None  # the upstream call alone (None for cache hits)
    ttft_ms: float | None = None  # streams: upstream time to the first chunk
    stream: bool = False
    tier_rank: int = 0  # the serving tier's place in the policy, cheapest 0
    request: ChatRequest | None = None  # kept for the decision log and opted-in prompt logs
    api: str = "chat"  # the front door: chat, messages or responses
    at: float = field(default_factory=time.time)
    key: str | None = None  # the sha256 of the caller's key (decision log: who may rate it)

    @property
    def savings_usd(self) -> float:
        return self.baseline_usd - self.cost_usd


def tenant_of(key: str | None, group: str | None) -> str:
    """How logs name a caller: its group, else a short prefix of its key's sha256."""
    if group:
        return group
    return f"key:{key[:12]}" if key else "anonymous"


def baseline_cost(policy: Policy, usage: Usage, cost: float) -> float:
    """What `usage` would have cost on the policy's savings baseline tier (default `pro`)."""
    baseline = policy.observability.savings_baseline_tier
    if baseline not in policy.tiers:
        return cost
    return cost_usd(usage, policy.prices_at(baseline, datetime.now(UTC)))


def record_of(
    policy: Policy,
    routed: Routed | None,
    *,
    request_id: str = "",
    status: int = 200,
    error: str | None = None,
    cache: str = "bypass",
    usage: Usage = NO_USAGE,
    cost: float = 0.0,
    timing: tuple[float, float | None] | None = None,
    decision: Decision | None = None,
    api: str | None = None,
) -> RequestRecord:
    """The one place a `RequestRecord` is built. `timing` is (upstream call started, first
    chunk at) on the monotonic clock; `decision` overrides the routed one (cache hits); `api`
    names the front door of a request that failed before it was routed."""
    now = time.monotonic()
    if routed is None:
        record = RequestRecord(request_id, status, None, policy.observability, error)
        record.api = api or "chat"
        return record
    decision = decision or routed.decision
    started, first_at = timing or (None, None)
    caller = routed.caller
    tiers = list(policy.tiers)
    return RequestRecord(
        request_id=request_id or routed.request_id,
        status=status,
        decision=decision,
        options=policy.observability,
        error=error,
        cache=cache,
        tenant=tenant_of(caller.key, caller.group),
        group=caller.group,
        usage=usage,
        cost_usd=cost,
        baseline_usd=baseline_cost(policy, usage, cost) if status < 400 else 0.0,
        latency_ms=(now - routed.admitted_at) * 1000,
        upstream_ms=None if started is None else (now - started) * 1000,
        ttft_ms=None if started is None or first_at is None else (first_at - started) * 1000,
        stream=routed.request.stream,
        tier_rank=tiers.index(decision.tier) if decision.tier in tiers else 0,
        request=routed.request,
        key=caller.key,
        api=routed.api,
    )
