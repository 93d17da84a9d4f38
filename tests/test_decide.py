"""Table tests for decide(): thresholds, pinned models, rules and their bounds."""

from __future__ import annotations

import pytest

from router.errors import InvalidRequest, ModelNotFound, RateLimited
from router.routing.classify import Assessment
from router.routing.constrain import RoutingState, Spent
from router.routing.decide import decide, resolve_thresholds, target_of
from router.routing.decision import RequestFacts, Thresholds
from router.routing.latency import Profile
from router.routing.limits import BudgetLimit
from router.routing.policy import Policy, parse_policy

POLICY_YAML = """
version: 1
tiers:
  flash:
    model: deepseek/deepseek-flash
    thinking: disabled
    prices: {input_usd_per_mtok: 0.30, cached_input_usd_per_mtok: 0.006, output_usd_per_mtok: 1.20}
    latency: {ttft_ms: 400, tokens_per_s: 90}
  pro:
    model: deepseek/deepseek-v4-pro
    thinking: enabled
    reasoning_effort: high
    prices: {input_usd_per_mtok: 1.32, cached_input_usd_per_mtok: 0.044, output_usd_per_mtok: 3.96}
    latency: {ttft_ms: 1200, tokens_per_s: 45}
  pro-max:
    model: deepseek/deepseek-v4-pro
    thinking: enabled
    reasoning_effort: max
    prices: {input_usd_per_mtok: 1.32, cached_input_usd_per_mtok: 0.044, output_usd_per_mtok: 3.96}
    latency: {ttft_ms: 2500, tokens_per_s: 35}
aliases:
  auto: {default_tier: flash, thresholds: {pro: 0.5, pro-max: 0.9}}
  cheap: {default_tier: flash, shares: {pro: 0.1}}
rules:
  - name: vip
    when: {header: {x-team: research}}
    then: {tier: pro-max}
  - name: quality-header
    when: {header: {x-flashpro-quality: high}}
    then: {min_tier: pro}
  - name: tools-cap
    when: {tools: true}
    then: {max_tier: pro}
  - name: json-cap
    when: {json_output: true, stream: false}
    then: {max_tier: flash}
  - name: long-prompt
    when: {min_prompt_tokens: 100000, model: auto}
    then: {max_tier: pro}
  - name: plain-no-max
    when: {reasoning: false, min_score: 0.9}
    then: {max_tier: pro}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY_YAML)


@pytest.fixture(scope="module")
def thresholds(policy: Policy) -> dict[str, Thresholds]:
    return resolve_thresholds(policy, lambda share: 1.0 - share)


CASES = [
    # (facts, score, reasoning, tier, rule)
    (RequestFacts("auto"), 0.10, False, "flash", "threshold:flash"),
    (RequestFacts("auto"), 0.50, False, "pro", "threshold:pro>=0.5"),
    (RequestFacts("auto"), 0.89, True, "pro", "threshold:pro>=0.5"),
    (RequestFacts("auto"), 0.95, True, "pro-max", "threshold:pro-max>=0.9"),
    (RequestFacts("auto"), 0.95, False, "pro", "plain-no-max"),
    (RequestFacts("auto", headers={"x-team": "research"}), 0.0, False, "pro-max", "vip"),
    (RequestFacts("auto", headers={"x-team": "sales"}), 0.0, False, "flash", "threshold:flash"),
    (
        RequestFacts("auto", headers={"x-flashpro-quality": "high"}),
        0.1,
        False,
        "pro",
        "quality-header",
    ),
    (
        RequestFacts("auto", headers={"x-flashpro-quality": "high"}),
        0.6,
        False,
        "pro",
        "threshold:pro>=0.5",
    ),
    (RequestFacts("auto", tools=True), 0.95, True, "pro", "tools-cap"),
    (RequestFacts("auto", tools=True), 0.2, True, "flash", "threshold:flash"),
    (RequestFacts("auto", json_output=True), 0.7, False, "flash", "json-cap"),
    (RequestFacts("auto", json_output=True, stream=True), 0.7, False, "pro", "threshold:pro>=0.5"),
    (RequestFacts("auto", prompt_tokens=200_000), 0.95, True, "pro", "long-prompt"),
    (RequestFacts("auto", prompt_tokens=99_999), 0.95, True, "pro-max", "threshold:pro-max>=0.9"),
    (RequestFacts("cheap"), 0.85, True, "flash", "threshold:flash"),
    (RequestFacts("cheap"), 0.95, True, "pro", "threshold:pro>=0.9"),
    (RequestFacts("pro"), 0.0, False, "pro", "pinned:pro"),
    (RequestFacts("pro-max", tools=True), 0.0, False, "pro-max", "pinned:pro-max"),
    (RequestFacts("deepseek-flash"), 0.99, True, "flash", "pinned:flash"),
    (RequestFacts("deepseek/deepseek-v4-pro"), 0.0, False, "pro", "pinned:pro"),
]


@pytest.mark.parametrize(("facts", "score", "reasoning", "tier", "rule"), CASES)
def test_decide_table(
    policy: Policy,
    thresholds: dict[str, Thresholds],
    facts: RequestFacts,
    score: float,
    reasoning: bool,
    tier: str,
    rule: str,
) -> None:
    decision = decide(policy, thresholds, facts, Assessment(score, reasoning, facts.prompt_tokens))
    assert (decision.tier, decision.rule) == (tier, rule)
    spec = policy.tiers[tier]
    assert decision.model == spec.model
    assert decision.thinking == spec.thinking
    assert decision.reasoning_effort == spec.reasoning_effort
    assert decision.score == score


def test_decision_carries_the_alias_only_when_routed(
    policy: Policy, thresholds: dict[str, Thresholds]
) -> None:
    routed = decide(policy, thresholds, RequestFacts("auto"), Assessment(0.3, False, 1))
    pinned = decide(policy, thresholds, RequestFacts("flash"), Assessment(0.3, False, 1))
    assert routed.alias == "auto"
    assert pinned.alias is None


def test_unknown_model_is_not_found(policy: Policy) -> None:
    with pytest.raises(ModelNotFound) as info:
        target_of(policy, "gpt-4o")
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert "auto" in info.value.message


def test_shares_become_thresholds_through_the_calibration(policy: Policy) -> None:
    resolved = resolve_thresholds(policy, lambda share: round(1.0 - share * 2, 3))
    assert resolved["cheap"].steps == (("pro", 0.8),)
    assert resolved["auto"].steps == (("pro", 0.5), ("pro-max", 0.9))


def test_header_names_match_case_insensitively() -> None:
    facts = RequestFacts("auto", headers={"x-team": "research"})
    assert facts.header("X-Team") == "research"


LIMITS_YAML = (
    POLICY_YAML.replace("  cheap: {default_tier: flash, shares: {pro: 0.1}}\n", "")
    + """
budgets: {on_exhausted: downgrade, total: {usd_per_day: 10}}
share_cap: {tier: pro, max_share: 0.3, window_s: 600, margin: 0.1}
affinity: {margin: 0.1}
groups:
  interns: {default_alias: fast, forbidden_tiers: [pro-max]}
  flash-only: {allowed_tiers: [flash]}
"""
).replace(
    "  auto: {default_tier: flash, thresholds: {pro: 0.5, pro-max: 0.9}}\n",
    "  auto: {default_tier: flash, thresholds: {pro: 0.5, pro-max: 0.9}}\n"
    "  fast: {default_tier: flash, thresholds: {pro: 0.5, pro-max: 0.9}, max_latency_ms: 12000}\n",
)

SPENT = Spent("total", BudgetLimit(usd_per_day=10), day_usd=10.0, month_usd=10.0)
LEFT = Spent("total", BudgetLimit(usd_per_day=10), day_usd=9.99, month_usd=9.99)
SLOW_PRO = {"pro": Profile(ttft_ms=1200, tokens_per_s=1.0)}

LIMIT_CASES = [
    # (model, score, reasoning, state, tier, rule)
    ("auto", 0.95, True, RoutingState(spent=(LEFT,)), "pro-max", "threshold:pro-max>=0.9"),
    ("auto", 0.95, True, RoutingState(spent=(SPENT,)), "flash", "budget:total"),
    ("pro-max", 0.0, False, RoutingState(spent=(SPENT,)), "flash", "budget:total"),
    ("auto", 0.1, False, RoutingState(spent=(SPENT,)), "flash", "threshold:flash"),
    # latency: ttft + max_tokens / tokens_per_s; pro-max 2500 + 400/35 s ~ 13.9 s
    ("auto", 0.95, True, RoutingState(max_latency_ms=12_000), "pro", "latency"),
    (
        "auto",
        0.95,
        True,
        RoutingState(max_latency_ms=12_000, max_tokens=100),
        "pro-max",
        "threshold:pro-max>=0.9",
    ),
    ("auto", 0.95, True, RoutingState(max_latency_ms=1_000), "flash", "latency"),
    ("pro-max", 0.0, False, RoutingState(max_latency_ms=1_000), "pro-max", "pinned:pro-max"),
    ("fast", 0.95, True, RoutingState(), "pro", "latency"),
    (
        "auto",
        0.6,
        False,
        RoutingState(max_latency_ms=12_000, profiles=SLOW_PRO),
        "flash",
        "latency",
    ),
    # share cap: past it, scores within 0.1 above the tier's threshold go down a tier
    ("auto", 0.55, False, RoutingState(strong_share=0.31), "flash", "share-cap"),
    ("auto", 0.65, False, RoutingState(strong_share=0.31), "pro", "threshold:pro>=0.5"),
    ("auto", 0.55, False, RoutingState(strong_share=0.29), "pro", "threshold:pro>=0.5"),
    ("auto", 0.95, True, RoutingState(strong_share=0.5), "pro", "share-cap"),
    ("auto", 0.85, False, RoutingState(strong_share=0.5), "pro", "threshold:pro>=0.5"),
    ("auto", 0.92, True, RoutingState(strong_share=0.5), "pro", "share-cap"),
    # groups: a default alias for the first alias, forbidden and allowed tiers
    ("auto", 0.95, True, RoutingState(group="interns"), "pro", "group:interns"),
    ("auto", 0.4, False, RoutingState(group="interns"), "flash", "threshold:flash"),
    ("auto", 0.95, True, RoutingState(group="flash-only"), "flash", "group:flash-only"),
    ("auto", 0.95, True, RoutingState(group="nobody"), "pro-max", "threshold:pro-max>=0.9"),
    # affinity: stay on the conversation's tier while the score is near the boundary
    ("auto", 0.55, False, RoutingState(affinity_tier="flash"), "flash", "affinity"),
    ("auto", 0.45, False, RoutingState(affinity_tier="pro"), "pro", "affinity"),
    ("auto", 0.75, False, RoutingState(affinity_tier="flash"), "pro", "threshold:pro>=0.5"),
    ("auto", 0.95, True, RoutingState(affinity_tier="pro"), "pro", "affinity"),
]


@pytest.fixture(scope="module")
def limits_policy() -> Policy:
    return parse_policy(LIMITS_YAML)


@pytest.mark.parametrize(("model", "score", "reasoning", "state", "tier", "rule"), LIMIT_CASES)
def test_decide_under_live_limits(
    limits_policy: Policy,
    model: str,
    score: float,
    reasoning: bool,
    state: RoutingState,
    tier: str,
    rule: str,
) -> None:
    thresholds = resolve_thresholds(limits_policy, lambda share: 1.0 - share)
    decision = decide(
        limits_policy, thresholds, RequestFacts(model), Assessment(score, reasoning, 10), state
    )
    assert (decision.tier, decision.rule) == (tier, rule)
    assert decision.model == limits_policy.tiers[tier].model


def test_exhausted_budget_rejects_when_the_policy_says_so(limits_policy: Policy) -> None:
    budgets = limits_policy.budgets
    assert budgets is not None
    policy = limits_policy.model_copy(
        update={"budgets": budgets.model_copy(update={"on_exhausted": "reject"})}
    )
    thresholds = resolve_thresholds(policy, lambda share: 1.0 - share)
    with pytest.raises(RateLimited) as info:
        decide(
            policy,
            thresholds,
            RequestFacts("auto"),
            Assessment(0.1, False, 1),
            RoutingState(spent=(SPENT,)),
        )
    assert info.value.status == 429


def test_pinned_tier_forbidden_to_the_group_is_not_found(limits_policy: Policy) -> None:
    thresholds = resolve_thresholds(limits_policy, lambda share: 1.0 - share)
    with pytest.raises(ModelNotFound):
        decide(
            limits_policy,
            thresholds,
            RequestFacts("pro-max"),
            Assessment(0.1, False, 1),
            RoutingState(group="interns"),
        )


def steps(policy: Policy) -> dict[str, Thresholds]:
    return resolve_thresholds(policy, lambda share: 1.0 - share)


def vision_policy(extra: str = "") -> Policy:
    text = POLICY_YAML.replace(
        "    model: deepseek/deepseek-flash\n",
        "    model: deepseek/deepseek-flash\n    vision: true\n",
    )
    return parse_policy(text + extra)


def test_images_move_a_routed_request_to_the_nearest_tier_that_reads_them() -> None:
    policy = vision_policy()
    facts = RequestFacts("auto", images=True)
    decision = decide(policy, steps(policy), facts, Assessment(0.99, True, 10))
    assert (decision.tier, decision.rule) == ("flash", "vision")
    assert "images need a vision tier" in decision.reason
    plain = decide(policy, steps(policy), RequestFacts("auto"), Assessment(0.99, True, 10))
    assert plain.tier == "pro-max"


def test_images_pinned_to_a_tier_without_vision_are_a_400() -> None:
    policy = vision_policy()
    with pytest.raises(InvalidRequest, match=r"'pro'.*does not accept images"):
        decide(policy, steps(policy), RequestFacts("pro", images=True), Assessment(0.5, False, 10))


def test_images_with_no_usable_vision_tier_are_a_400() -> None:
    policy = parse_policy(POLICY_YAML)  # no tier says vision: true
    with pytest.raises(InvalidRequest, match="No tier"):
        decide(
            policy,
            steps(policy),
            RequestFacts("auto", images=True),
            Assessment(0.1, False, 10),
        )
    grouped = vision_policy("groups: {g: {forbidden_tiers: [flash]}}")
    state = RoutingState(group="g")
    with pytest.raises(InvalidRequest, match="No tier"):
        decide(
            grouped,
            steps(grouped),
            RequestFacts("auto", images=True),
            Assessment(0.1, False, 10),
            state,
        )


def test_a_deprecated_id_pins_its_tier_with_a_note() -> None:
    policy = parse_policy(
        POLICY_YAML.replace(
            "    model: deepseek/deepseek-flash\n",
            "    model: deepseek/deepseek-flash\n    deprecated_ids: [deepseek-chat]\n",
        )
    )
    decision = decide(
        policy, steps(policy), RequestFacts("deepseek-chat"), Assessment(0.5, False, 10)
    )
    assert decision.tier == "flash"
    assert "deprecation: 'deepseek-chat' is a retired id, use 'deepseek-flash'" in decision.reason
