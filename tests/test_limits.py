"""Policy sections for live limits: validation with YAML paths, off-peak windows, learning."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.routing.callers import Caller
from router.routing.cost import Usage
from router.routing.decision import Decision
from router.routing.latency import LatencyLearner, Profile, expected_latency_ms
from router.routing.limits import OffPeak
from router.routing.policy import PolicyError, parse_policy
from router.schemas import ChatRequest
from router.state.controls import Controls, conversation_of

DEFAULT_YAML = (Path(__file__).resolve().parents[1] / "policies" / "default.yaml").read_text()
HEX = "ab" * 32


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("budgets: {downgrade_to: turbo}", "budgets.downgrade_to: unknown tier 'turbo'"),
        ("budgets: {on_exhausted: shrug}", "budgets.on_exhausted"),
        ("budgets: {total: {usd_per_day: -1}}", "budgets.total.usd_per_day"),
        ("share_cap: {tier: turbo, max_share: 0.3}", "share_cap.tier: unknown tier 'turbo'"),
        ("share_cap: {max_share: 1.5}", "share_cap.max_share"),
        ("groups: {g: {forbidden_tiers: [turbo]}}", "groups.g.forbidden_tiers[0]: unknown tier"),
        ("groups: {g: {allowed_tiers: [pro, nitro]}}", "groups.g.allowed_tiers[1]: unknown tier"),
        ("groups: {g: {default_alias: fastest}}", "groups.g.default_alias: unknown alias"),
        ("groups: {g: {allowed_tiers: [pro], forbidden_tiers: [pro]}}", "groups.g: no tier"),
        (f"keys: {{{HEX}: nobody}}", f"keys.{HEX}: unknown group 'nobody'"),
        ("keys: {not-a-hash: g}\ngroups: {g: {}}", "keys: 'not-a-hash' is not"),
        ("key_env: {TEAM_KEY: nobody}", "key_env.TEAM_KEY: unknown group 'nobody'"),
        ("off_peak: {windows_utc: ['25:00-01:00'], discount: 0.5}", "off_peak.windows_utc"),
        ("off_peak: {windows_utc: ['16:30-00:30'], discount: 0}", "off_peak.discount"),
        ("affinity: {margin: 2}", "affinity.margin"),
        ("learn_latency: maybe", "learn_latency"),
    ],
)
def test_policy_check_names_the_yaml_path(extra: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(DEFAULT_YAML + "\n" + extra)
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_alias_max_latency_must_be_positive() -> None:
    text = DEFAULT_YAML.replace("shares: {pro: 0.12}", "shares: {pro: 0.12}\n    max_latency_ms: 0")
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert any("aliases.auto-economy.max_latency_ms" in p for p in info.value.problems)


def test_every_new_section_loads_together() -> None:
    policy = parse_policy(
        DEFAULT_YAML
        + f"""
budgets: {{on_exhausted: reject, downgrade_to: flash, total: {{usd_per_day: 50, usd_per_month: 1000}},
          per_key: {{usd_per_day: 5}}}}
share_cap: {{tier: pro, max_share: 0.3, window_s: 600, margin: 0.05}}
groups:
  research: {{default_alias: auto-quality, budget: {{usd_per_month: 300}}}}
  interns: {{allowed_tiers: [flash, pro], forbidden_tiers: [pro]}}
keys: {{{HEX}: research}}
key_env: {{INTERN_API_KEY: interns}}
affinity: {{enabled: true, margin: 0.1}}
off_peak: {{windows_utc: ["16:30-00:30"], discount: 0.5}}
learn_latency: true
"""
    )
    assert policy.groups["research"].budget is not None
    assert policy.learn_latency


def test_off_peak_windows_wrap_past_midnight() -> None:
    off_peak = OffPeak(windows_utc=["16:30-00:30"], discount=0.5)
    at = lambda h, m: datetime(2026, 1, 1, h, m, tzinfo=UTC)  # noqa: E731
    assert off_peak.factor(at(16, 29)) == 1.0
    assert off_peak.factor(at(16, 30)) == 0.5
    assert off_peak.factor(at(0, 29)) == 0.5
    assert off_peak.factor(at(0, 30)) == 1.0


def test_latency_learner_follows_observations() -> None:
    policy = parse_policy(DEFAULT_YAML)
    flash = policy.tiers["flash"]
    learner = LatencyLearner()
    for _ in range(50):
        learner.observe("flash", flash, 0.3, total_ms=1200.0, tokens=100, ttft_ms=200.0)
    learned = learner.profiles()["flash"]
    assert learned.ttft_ms == pytest.approx(200.0, rel=1e-3)
    assert learned.tokens_per_s == pytest.approx(100.0, rel=1e-3)
    assert expected_latency_ms(flash, learned, 100) == pytest.approx(1200.0, rel=1e-3)
    assert expected_latency_ms(flash, Profile(400, 90), None) == pytest.approx(
        400 + 400 / 90 * 1000
    )


async def test_controls_learn_latency_only_when_the_policy_allows() -> None:
    decision = Decision(
        "auto", "flash", "deepseek/deepseek-v4-flash", "disabled", None, 0.1, "r", ""
    )
    for learn, expected in ((False, set()), (True, {"flash"})):
        policy = parse_policy(DEFAULT_YAML + f"\nlearn_latency: {str(learn).lower()}\n")
        controls = Controls()
        await controls.answered(policy, Caller(), decision, Usage(completion_tokens=50), 0.0, 900.0)
        state = await controls.state_for(policy, Caller())
        assert set(state.profiles) == expected


def test_a_conversation_is_recognised_by_its_opening_messages() -> None:
    def chat(*turns: tuple[str, str]) -> ChatRequest:
        messages = [{"role": role, "content": text} for role, text in turns]
        return ChatRequest.model_validate({"model": "auto", "messages": messages})

    first = chat(("user", "hi"))
    second = chat(("user", "hi"), ("assistant", "hello"), ("user", "more"))
    third = chat(
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "more"),
        ("assistant", "x"),
        ("user", "again"),
    )
    other = chat(("user", "bye"), ("assistant", "hello"), ("user", "more"))
    assert conversation_of(first, "k") is None
    assert conversation_of(second, "k") == conversation_of(third, "k")
    assert conversation_of(second, "k") != conversation_of(other, "k")
    assert conversation_of(second, "k") != conversation_of(second, "another key")


async def test_controls_remember_a_conversations_tier() -> None:
    policy = parse_policy(DEFAULT_YAML + "\naffinity: {margin: 0.1}\n")
    caller = Caller(key="k", conversation="c1")
    decision = Decision("auto", "pro", "deepseek/deepseek-v4-pro", "enabled", "high", 0.8, "r", "")
    await Controls().admitted(policy, caller, decision)
    controls = Controls()
    assert (await controls.state_for(policy, caller)).affinity_tier is None
    await controls.admitted(policy, caller, decision)
    assert (await controls.state_for(policy, caller)).affinity_tier == "pro"
    assert (await controls.state_for(policy, Caller(key="k"))).affinity_tier is None


def test_off_peak_by_weekday_follows_deepseeks_peak_hours() -> None:
    policy = parse_policy(DEFAULT_YAML)
    assert policy.off_peak is not None
    monday, saturday = 30, 5  # November 30 and December 5, 2026
    at = lambda day, h, m: datetime(2026, 11 if day == 30 else 12, day, h, m, tzinfo=UTC)  # noqa: E731
    assert not policy.off_peak.active(at(monday, 1, 0))  # peak 01:00-04:00 and 06:00-10:00
    assert not policy.off_peak.active(at(monday, 9, 59))
    assert policy.off_peak.active(at(monday, 4, 0))
    assert policy.off_peak.active(at(monday, 10, 0))
    assert policy.off_peak.active(at(monday, 0, 59))
    assert policy.off_peak.active(at(saturday, 2, 0))  # weekends are off-peak all day
    peak, off = (
        policy.prices_at("pro", at(monday, 2, 0)),
        policy.prices_at("pro", at(saturday, 2, 0)),
    )
    assert peak == policy.tiers["pro"].prices
    assert off == policy.tiers["pro"].off_peak_prices
    assert off.output_usd_per_mtok == peak.output_usd_per_mtok / 2


def test_tiers_without_off_peak_prices_take_the_discount() -> None:
    policy = parse_policy(
        DEFAULT_YAML.replace("off_peak_prices:", "# off_peak_prices:")
        + "\noff_peak: {windows_utc: ['00:00-24:00'], discount: 0.25}"
    )
    prices = policy.prices_at("flash", datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
    assert prices.output_usd_per_mtok == pytest.approx(
        policy.tiers["flash"].prices.output_usd_per_mtok * 0.25
    )


@pytest.mark.parametrize(
    "off_peak",
    [
        "{discount: 0.5}",
        "{windows_utc: ['00:00-01:00'], peak: [{days: [mon], windows_utc: ['01:00-02:00']}]}",
        "{peak: [{days: [someday], windows_utc: ['01:00-02:00']}]}",
        "{peak: [{days: [mon], windows_utc: ['1-2']}]}",
    ],
)
def test_off_peak_needs_exactly_one_valid_way_to_say_its_hours(off_peak: str) -> None:
    with pytest.raises(PolicyError, match="off_peak"):
        parse_policy(DEFAULT_YAML + f"\noff_peak: {off_peak}")
