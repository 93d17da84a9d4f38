"""Decide which tier serves a request, from the policy, request facts and the score. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from router.errors import ModelNotFound, clip
from router.routing.classify import Assessment
from router.routing.constrain import NO_STATE, RoutingState, constrain, routed_model, with_vision
from router.routing.decision import Decision, RequestFacts, Thresholds
from router.routing.policy import Condition, Policy, Rule


def resolve_thresholds(
    policy: Policy, threshold_for_share: Callable[[float], float]
) -> dict[str, Thresholds]:
    """Turn each alias's thresholds, or traffic shares via the calibration, into score steps."""
    resolved: dict[str, Thresholds] = {}
    for name, alias in policy.aliases.items():
        if alias.thresholds is not None:
            table = dict(alias.thresholds)
        else:
            table = {
                tier: threshold_for_share(share) for tier, share in (alias.shares or {}).items()
            }
        steps = tuple(sorted(table.items(), key=lambda item: policy.rank(item[0])))
        resolved[name] = Thresholds(alias.default_tier, steps)
    return resolved


WARMUP = 200  # a live alias's scores seen before they, not the calibration set, set its steps


def live_thresholds(policy: Policy, alias: str, scores: Sequence[float]) -> Thresholds | None:
    """The alias's thresholds from the quantiles of `scores`: for a share s, the score of the
    ceil(s * n)-th highest, so about s of these scores reach it. None while warming up."""
    spec = policy.aliases[alias]
    if len(scores) < WARMUP or spec.shares is None:
        return None
    ordered = sorted(scores, reverse=True)
    steps: list[tuple[str, float]] = []
    for tier, share in spec.shares.items():
        k = math.ceil(share * len(ordered) - 1e-9)
        steps.append((tier, ordered[k - 1] if k > 0 else math.inf))
    steps.sort(key=lambda step: policy.rank(step[0]))
    return Thresholds(spec.default_tier, tuple(steps))


def target_of(policy: Policy, model: str) -> tuple[str | None, str | None]:
    """(alias, None) for a routed model name (an alias, or a name a `model_patterns` entry
    matches), (None, tier) for a pinned one; else 404."""
    if model in policy.aliases:
        return model, None
    tier = policy.tier_for_model(model)
    if tier is not None:
        return None, tier
    alias = policy.alias_for_pattern(model)
    if alias is not None:
        return alias, None
    names = ", ".join([*policy.aliases, *policy.tiers])
    raise ModelNotFound(
        f"The model '{clip(model)}' does not exist on this router. Use one of: {names}.",
        param="model",
    )


def matches(condition: Condition, facts: RequestFacts, assessment: Assessment) -> bool:
    """True when every condition the rule gives holds for this request."""
    checks = (
        condition.model is None or facts.model in condition.model,
        condition.tools is None or condition.tools == facts.tools,
        condition.json_output is None or condition.json_output == facts.json_output,
        condition.stream is None or condition.stream == facts.stream,
        condition.min_prompt_tokens is None or facts.prompt_tokens >= condition.min_prompt_tokens,
        condition.max_prompt_tokens is None or facts.prompt_tokens <= condition.max_prompt_tokens,
        condition.min_score is None or assessment.score >= condition.min_score,
        condition.max_score is None or assessment.score < condition.max_score,
        condition.reasoning is None or condition.reasoning == assessment.reasoning,
        condition.header is None or all(facts.header(k) == v for k, v in condition.header.items()),
    )
    return all(checks)


def decide(
    policy: Policy,
    thresholds: Mapping[str, Thresholds],
    facts: RequestFacts,
    assessment: Assessment,
    state: RoutingState = NO_STATE,
) -> Decision:
    """Pick the tier for one request. Pinned models go to their tier; aliases are routed.

    The score picks a tier through the alias's thresholds; then the first matching rule that
    changes the outcome wins: a `tier` rule always does, a bound only when it moves the tier.
    Last, live limits in `state` (budgets, latency, share cap, caller group) bend it. A
    live-calibrated alias's thresholds in `state` replace the ones the policy resolved.
    """
    if state.thresholds:
        thresholds = {**thresholds, **state.thresholds}
    model = routed_model(policy, facts.model, state)
    decision = _by_rules(policy, thresholds, facts, assessment, model)
    decision = constrain(policy, thresholds, decision, state)
    return with_vision(policy, decision, facts.images, state.group)


def _by_rules(
    policy: Policy,
    thresholds: Mapping[str, Thresholds],
    facts: RequestFacts,
    assessment: Assessment,
    model: str,
) -> Decision:
    alias, pinned = target_of(policy, model)
    if pinned is not None:
        reason = "model pinned"
        if model in policy.tiers[pinned].deprecated_ids:
            current = policy.tiers[pinned].model_name
            reason = f"model pinned; deprecation: '{model}' is a retired id, use '{current}'"
        return _decision(policy, None, pinned, assessment, f"pinned:{pinned}", reason)
    assert alias is not None
    steps = thresholds[alias]
    by_score, threshold_rule = steps.tier_for(assessment.score)
    for rule in policy.rules:
        if matches(rule.when, facts, assessment):
            decision = _apply(policy, alias, rule, by_score, assessment)
            if decision is not None:
                return decision
    reason = f"score {assessment.score:.3f} -> {by_score}"
    return _decision(policy, alias, by_score, assessment, threshold_rule, reason)


def _apply(
    policy: Policy, alias: str, rule: Rule, by_score: str, assessment: Assessment
) -> Decision | None:
    """The rule's decision, or None when it only bounds and the bound changes nothing."""
    then = rule.then
    if then.tier is not None:
        return _decision(policy, alias, then.tier, assessment, rule.name, f"rule picks {then.tier}")
    tier = by_score
    if then.min_tier is not None and policy.rank(tier) < policy.rank(then.min_tier):
        tier = then.min_tier
    if then.max_tier is not None and policy.rank(tier) > policy.rank(then.max_tier):
        tier = then.max_tier
    if tier == by_score:
        return None
    reason = f"score {assessment.score:.3f} -> {by_score}; rule moves it to {tier}"
    return _decision(policy, alias, tier, assessment, rule.name, reason)


def _decision(
    policy: Policy, alias: str | None, tier: str, assessment: Assessment, rule: str, reason: str
) -> Decision:
    spec = policy.tiers[tier]
    return Decision(
        alias=alias,
        tier=tier,
        model=spec.model,
        thinking=spec.thinking,
        reasoning_effort=spec.reasoning_effort,
        score=assessment.score,
        rule=rule,
        reason=reason,
    )
