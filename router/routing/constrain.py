"""Bend a rule-and-score decision to live limits: conversation affinity, the traffic-share cap,
the caller's group, latency targets and spend budgets. Pure: the live state comes in as data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from router.errors import BudgetExhausted, InvalidRequest, ModelNotFound, ServiceUnavailable
from router.routing.decision import Decision, Thresholds
from router.routing.latency import Profile, expected_latency_ms, profile_of
from router.routing.limits import BudgetLimit
from router.routing.policy import Policy


@dataclass(frozen=True, slots=True)
class Spent:
    """One budget scope's spend so far this UTC day and month, with its limits."""

    scope: str  # "total", "key", "group:<name>"
    limit: BudgetLimit
    day_usd: float = 0.0  # spent, and held by requests in flight
    month_usd: float = 0.0
    shared: bool = True  # read from the shared ledger; False: this process's view (outage)

    @property
    def exhausted(self) -> bool:
        day, month = self.limit.usd_per_day, self.limit.usd_per_month
        return (day is not None and self.day_usd >= day) or (
            month is not None and self.month_usd >= month
        )


@dataclass(frozen=True, slots=True)
class RoutingState:
    """Live facts decide() may look at beyond the request: all plain data, gathered before."""

    spent: tuple[Spent, ...] = ()
    max_latency_ms: float | None = None  # the x-flashpro-max-latency-ms header
    max_tokens: int | None = None  # the request's output limit
    profiles: Mapping[str, Profile] = field(default_factory=dict)  # learned latency
    strong_share: float | None = None  # share of the window at the share cap's tier or above
    group: str | None = None  # the caller's key group
    affinity_tier: str | None = None  # the tier that served this conversation before
    now: float = 0.0  # unix time the state was read at (budgets reset at UTC midnight)
    # live-calibrated aliases' thresholds, from the scores they have seen (router/state/calibration.py)
    thresholds: Mapping[str, Thresholds] = field(default_factory=dict)


NO_STATE = RoutingState()


def routed_model(policy: Policy, model: str, state: RoutingState) -> str:
    """The model name to route: a group's default alias stands in for the policy's first alias."""
    group = policy.groups.get(state.group or "")
    first = next(iter(policy.aliases))
    if group is not None and group.default_alias is not None and model == first:
        return group.default_alias
    return model


def usable_tiers(policy: Policy, group_name: str | None) -> list[str]:
    group = policy.groups.get(group_name or "")
    if group is None:
        return list(policy.tiers)
    allowed = group.allowed_tiers or list(policy.tiers)
    return [t for t in policy.tiers if t in allowed and t not in group.forbidden_tiers]


def constrain(
    policy: Policy, thresholds: Mapping[str, Thresholds], decision: Decision, state: RoutingState
) -> Decision:
    """Apply affinity, the share cap, the group, latency targets and budgets, in that order."""
    if decision.alias is not None:
        steps = thresholds[decision.alias]
        decision = _affinity(policy, steps, decision, state)
        decision = _share_cap(policy, steps, decision, state)
    decision = _group(policy, decision, state)
    if decision.alias is not None:
        decision = _latency(policy, decision, state)
    return _budgets(policy, _unverified(policy, decision, state), state)


def _threshold(steps: Thresholds, tier: str) -> float | None:
    return next((value for name, value in steps.steps if name == tier), None)


def _affinity(
    policy: Policy, steps: Thresholds, decision: Decision, state: RoutingState
) -> Decision:
    rules, previous = policy.affinity, state.affinity_tier
    if rules is None or not rules.enabled or previous is None or previous == decision.tier:
        return decision
    if previous not in policy.tiers or not decision.rule.startswith("threshold:"):
        return decision
    upper = max(previous, decision.tier, key=policy.rank)
    boundary = _threshold(steps, upper)
    if boundary is None or abs(decision.score - boundary) >= rules.margin:
        return decision
    reason = f"{decision.reason}; conversation stays on {previous} (prefix cache)"
    return retarget(policy, decision, previous, rule="affinity", reason=reason)


def _share_cap(
    policy: Policy, steps: Thresholds, decision: Decision, state: RoutingState
) -> Decision:
    cap, share = policy.share_cap, state.strong_share
    if cap is None or share is None or share < cap.max_share:
        return decision
    rank = policy.rank(decision.tier)
    if rank < policy.rank(cap.tier) or rank == 0:
        return decision
    threshold = _threshold(steps, decision.tier)
    if threshold is None or decision.score >= threshold + cap.margin:
        return decision
    lower = list(policy.tiers)[rank - 1]
    reason = (
        f"{decision.reason}; {cap.tier}+ share {share:.2f} >= {cap.max_share:.2f}, "
        f"borderline score goes down to {lower}"
    )
    return retarget(policy, decision, lower, rule="share-cap", reason=reason)


def _group(policy: Policy, decision: Decision, state: RoutingState) -> Decision:
    usable = usable_tiers(policy, state.group)
    if decision.tier in usable:
        return decision
    if decision.alias is None:
        raise ModelNotFound(
            f"The model '{decision.tier}' is not available to this API key.", param="model"
        )
    rank = policy.rank(decision.tier)
    below = [t for t in usable if policy.rank(t) < rank]
    tier = below[-1] if below else usable[0]
    reason = f"{decision.reason}; group {state.group} may not use {decision.tier}"
    return retarget(policy, decision, tier, rule=f"group:{state.group}", reason=reason)


def _latency(policy: Policy, decision: Decision, state: RoutingState) -> Decision:
    limits = [policy.aliases[decision.alias].max_latency_ms if decision.alias else None]
    limits.append(state.max_latency_ms)
    given = [limit for limit in limits if limit is not None]
    if not given:
        return decision
    limit = min(given)

    def expected(name: str) -> float:
        tier = policy.tiers[name]
        return expected_latency_ms(tier, profile_of(tier, state.profiles, name), state.max_tokens)

    if expected(decision.tier) <= limit:
        return decision
    usable = usable_tiers(policy, state.group)
    rank = policy.rank(decision.tier)
    fits = [t for t in usable if policy.rank(t) < rank and expected(t) <= limit]
    if fits:
        tier = fits[-1]
        why = f"expected {expected(decision.tier):.0f} ms > {limit:.0f} ms, {tier} fits"
    else:
        tier = min(usable, key=expected)
        why = f"no tier is expected within {limit:.0f} ms; {tier} is the fastest"
    if tier == decision.tier:
        return decision
    return retarget(policy, decision, tier, rule="latency", reason=f"{decision.reason}; {why}")


def _budgets(policy: Policy, decision: Decision, state: RoutingState) -> Decision:
    budgets = policy.budgets
    spent = next((s for s in state.spent if s.exhausted), None)
    if budgets is None or spent is None:
        return decision
    if budgets.on_exhausted == "reject":
        raise budget_exhausted(spent, state.now)
    target = budgets.downgrade_to or next(iter(policy.tiers))
    if policy.rank(decision.tier) <= policy.rank(target):
        return decision
    reason = f"{decision.reason}; {spent.scope} budget spent, downgraded to {target}"
    return retarget(policy, decision, target, rule=f"budget:{spent.scope}", reason=reason)


def _unverified(policy: Policy, decision: Decision, state: RoutingState) -> Decision:
    """Budgets that fail closed while the shared ledger is unreachable: refuse (503) or serve
    from the downgrade tier, as if spent."""
    budgets = policy.budgets
    if budgets is None or budgets.on_store_outage == "open":
        return decision
    blind = next((s for s in state.spent if not s.shared), None)
    if blind is None:
        return decision
    if budgets.on_exhausted == "reject":
        raise ServiceUnavailable(
            f"The {blind.scope} spend budget cannot be checked: the shared spend ledger is "
            "unreachable and this policy fails closed (budgets.on_store_outage: closed).",
            headers={"Retry-After": "1"},
        )
    target = budgets.downgrade_to or next(iter(policy.tiers))
    if policy.rank(decision.tier) <= policy.rank(target):
        return decision
    reason = f"{decision.reason}; spend ledger unreachable, budgets fail closed to {target}"
    return retarget(policy, decision, target, rule=f"budget:{blind.scope}", reason=reason)


def with_vision(
    policy: Policy, decision: Decision, images: bool, group: str | None = None
) -> Decision:
    """A request with image parts goes to a tier that reads images: the routed tier if it does,
    else the nearest one the caller may use (the cheaper on a tie). A pinned tier without
    vision, or no such tier at all, is a 400: images are never dropped silently."""
    if not images or policy.tiers[decision.tier].vision:
        return decision
    usable = [t for t in usable_tiers(policy, group) if policy.tiers[t].vision]
    if decision.alias is None or not usable:
        model = policy.tiers[decision.tier].model
        where = (
            f"Tier '{decision.tier}' ({model}) does not accept images"
            if decision.alias is None
            else "No tier of this policy that the caller may use accepts images"
        )
        raise InvalidRequest(
            f"{where}, and the request has image parts. Route it through an alias to a tier "
            "marked `vision: true`, or send text only.",
            param="messages",
            code="images_not_supported",
        )
    rank = policy.rank(decision.tier)
    tier = min(usable, key=lambda t: (abs(policy.rank(t) - rank), policy.rank(t)))
    reason = f"{decision.reason}; images need a vision tier: {tier}"
    return retarget(policy, decision, tier, reason, rule="vision")


def budget_exhausted(spent: Spent, now: float) -> BudgetExhausted:
    """The 429 for a spent budget: which budget, spend and limit, when it resets."""
    limit = spent.limit
    month = limit.usd_per_month is not None and spent.month_usd >= limit.usd_per_month
    moment = datetime.fromtimestamp(now, UTC)
    midnight = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if month:
        used, cap, period, label = (
            spent.month_usd,
            limit.usd_per_month or 0.0,
            "this month",
            "monthly",
        )
        reset = (midnight.replace(day=1) + timedelta(days=32)).replace(day=1)
    else:
        used, cap, period, label = spent.day_usd, limit.usd_per_day or 0.0, "today", "daily"
        reset = midnight + timedelta(days=1)
    wait = max(1, math.ceil(reset.timestamp() - now))
    decimals = 2 if cap >= 0.01 else min(10, 1 - math.floor(math.log10(cap))) if cap > 0 else 6
    return BudgetExhausted(
        f"The {_scope_name(spent.scope)} {label} budget is spent: ${used:.{decimals}f} of "
        f"${cap:.{decimals}f} {period}. It resets at {reset:%Y-%m-%d %H:%M} UTC, in "
        f"{_duration(wait)}; until then flashpro refuses requests under it.",
        headers={"retry-after": str(wait), "x-should-retry": "false"},
    )


def _scope_name(scope: str) -> str:
    if scope.startswith("group:"):
        return f"group '{scope.removeprefix('group:')}'"
    return "per-key" if scope.startswith("key:") else scope


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"


def retarget(
    policy: Policy, decision: Decision, tier: str, reason: str, rule: str | None = None
) -> Decision:
    """The decision moved to another tier (by a limit, a fallback or a cached answer)."""
    spec = policy.tiers[tier]
    return replace(
        decision,
        tier=tier,
        model=spec.model,
        thinking=spec.thinking,
        reasoning_effort=spec.reasoning_effort,
        rule=decision.rule if rule is None else rule,
        reason=reason,
    )
