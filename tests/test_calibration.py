"""Live calibration: score windows, warm-up, quantile thresholds, shares that hold after a traffic
shift, and one window shared by two instances through Redis."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import httpx
import pytest
import redis

from router.admission import admit
from router.app import build_deps
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier, load_classifier
from router.routing.constrain import RoutingState
from router.routing.decide import WARMUP, decide, live_thresholds
from router.routing.decision import RequestFacts
from router.routing.policy import PolicyError, parse_policy
from router.routing.routed import Routing
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.state import store
from router.state.calibration import (
    LiveCalibration,
    MemoryScoreWindow,
    RedisScoreWindow,
    actual_shares,
)
from router.state.controls import Controls, open_controls
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import ROOT, RedisServer, free_port, serve_app, settings_for

DEFAULT_YAML = (ROOT / "policies" / "default.yaml").read_text()
# The same shares as auto-economy, with the fixed thresholds of the calibration set.
FIXED_ALIAS = """
  economy-fixed:
    default_tier: flash
    shares: {pro: 0.12}
"""
POLICY = parse_policy(DEFAULT_YAML.replace("\naliases:\n", "\naliases:" + FIXED_ALIAS, 1))

CHAT = [
    "hi",
    "thanks",
    "please",
    "tell",
    "me",
    "a",
    "short",
    "joke",
    "about",
    "cats",
    "dogs",
    "weather",
    "today",
    "friend",
    "hello",
    "nice",
    "lunch",
    "movie",
    "song",
    "colour",
    "favourite",
    "good",
    "morning",
    "weekend",
]
HARD = [
    "prove",
    "theorem",
    "lemma",
    "integral",
    "derive",
    "matrix",
    "eigenvalue",
    "convergence",
    "algorithm",
    "complexity",
    "recursion",
    "induction",
    "polynomial",
    "manifold",
    "optimise",
    "compiler",
    "concurrency",
    "invariant",
]


def prompt(rng: random.Random, hard: bool) -> str:
    """Chit-chat, or maths and code: the shipped calibration sends far more of the latter to Pro."""
    words = HARD if hard else CHAT
    text = " ".join(
        rng.choice(words) for _ in range(rng.randint(4, 40) if hard else rng.randint(3, 14))
    )
    if hard and rng.random() < 0.5:
        a, b, c, n = (rng.randint(2, 9) for _ in range(4))
        text += f" where $x^{a} + y^{b} = z^{c}$ for n > {n}"
    elif hard:
        text += f"\n```python\ndef f(x):\n    return x * {rng.randint(1, 99)}\n```"
    return text + ("?" if rng.random() < 0.5 else ".")


def chat(model: str, text: str) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}]}
    )


def pro_share(tiers: list[str]) -> float:
    return sum(tier != "flash" for tier in tiers) / len(tiers)


def test_quantile_thresholds_give_the_policy_shares_of_the_scores_seen() -> None:
    scores = [i / 1000 for i in range(1000)]
    steps = live_thresholds(POLICY, "auto", scores)
    assert steps is not None
    assert steps.default_tier == "flash"
    assert [tier for tier, _ in steps.steps] == ["pro", "pro-max"]
    for tier, share in (("pro", 0.30), ("pro-max", 0.04)):
        minimum = dict(steps.steps)[tier]
        assert sum(s >= minimum for s in scores) / len(scores) == pytest.approx(share)
    none_to_pro = parse_policy(DEFAULT_YAML.replace("shares: {pro: 0.12}", "shares: {pro: 0.0}"))
    steps = live_thresholds(none_to_pro, "auto-economy", scores)
    assert steps is not None and steps.tier_for(1.0)[0] == "flash"
    assert math.isinf(dict(steps.steps)["pro"])


def test_warm_up_keeps_the_shipped_calibration_until_enough_scores() -> None:
    assert live_thresholds(POLICY, "auto-economy", [0.5] * (WARMUP - 1)) is None
    assert live_thresholds(POLICY, "auto-economy", [0.5] * WARMUP) is not None


async def test_live_thresholds_come_only_for_live_aliases_past_warm_up() -> None:
    live = LiveCalibration(refresh_s=0)
    for i in range(WARMUP - 1):
        await live.seen(POLICY, "auto-economy", i / WARMUP, "flash")
        await live.seen(POLICY, "economy-fixed", i / WARMUP, "flash")  # not live: not kept
        await live.seen(POLICY, None, 0.9, "pro")  # pinned: no alias
    assert await live.thresholds(POLICY) == {}
    await live.seen(POLICY, "auto-economy", 0.999, "pro")
    found = await live.thresholds(POLICY)
    assert list(found) == ["auto-economy"]
    assert await live.window.recent("economy-fixed") == []


async def test_thresholds_are_reread_only_after_the_refresh_interval() -> None:
    live = LiveCalibration(refresh_s=3600)
    assert await live.thresholds(POLICY) == {}
    for i in range(WARMUP):
        await live.seen(POLICY, "auto-economy", i / WARMUP, "flash")
    assert await live.thresholds(POLICY) == {}  # still the value read an hour ago


async def test_memory_window_keeps_only_the_most_recent_scores() -> None:
    window = MemoryScoreWindow(size=3)
    for i in range(5):
        await window.add("a", i / 10, "flash" if i % 2 else "pro")
    assert await window.recent("a") == [(0.4, "pro"), (0.3, "flash"), (0.2, "pro")]
    assert await window.recent("b") == []


def test_actual_shares_count_the_tier_served_and_above() -> None:
    seen = [(0.1, "flash"), (0.9, "pro-max"), (0.7, "pro"), (0.2, "flash"), (0.3, "gone")]
    assert actual_shares(POLICY, "auto", seen) == {"pro": 0.5, "pro-max": 0.25}
    assert actual_shares(POLICY, "auto", []) == {"pro": None, "pro-max": None}


def test_decide_uses_live_thresholds_given_in_the_state() -> None:
    classifier = FixedScoreClassifier(score=0.5)
    routing = Routing.build(POLICY, "test", classifier, {})
    facts = RequestFacts(model="auto-economy")
    assessment = classifier.assess(chat("auto-economy", "hi"))
    assert decide(POLICY, routing.thresholds, facts, assessment).tier == "flash"
    live = live_thresholds(POLICY, "auto-economy", [i / 1000 for i in range(WARMUP)])
    assert live is not None
    state = RoutingState(thresholds={"auto-economy": live})
    decision = decide(POLICY, routing.thresholds, facts, assessment, state)
    assert decision.tier == "pro"
    assert decision.rule.startswith("threshold:pro>=")


def test_policy_refuses_live_calibration_without_shares() -> None:
    text = DEFAULT_YAML.replace(
        "shares: {pro: 0.30, pro-max: 0.04}",
        "thresholds: {pro: 0.6}\n    calibration: live",
    )
    with pytest.raises(PolicyError, match=r"needs .shares."):
        parse_policy(text)


async def test_live_share_holds_after_a_traffic_shift_while_fixed_thresholds_drift() -> None:
    classifier = load_classifier()
    deps = Deps(
        routing=Routing.build(POLICY, "test", classifier, {}),
        upstream=LiteLLMUpstream(secrets=()),
        memory=ReasoningMemory(),
        api_base=None,
        controls=Controls(calibration=LiveCalibration(refresh_s=0)),
    )
    rng = random.Random(7)
    served: dict[str, list[str]] = {"auto-economy": [], "economy-fixed": []}
    for hard_share, count in ((0.1, 1500), (0.9, 3000)):
        for _ in range(count):
            text = prompt(rng, rng.random() < hard_share)
            for alias, tiers in served.items():
                tiers.append((await admit(deps, chat(alias, text), {})).decision.tier)
    live, fixed = served["auto-economy"], served["economy-fixed"]
    target = 0.12
    # Once the window holds only the new mix (its last 2,000 requests), live keeps the share.
    print(
        f"Pro share, last 1,000: live {pro_share(live[-1000:]):.3f}, fixed {pro_share(fixed[-1000:]):.3f}; before the shift: live {pro_share(live[1000:1500]):.3f}, fixed {pro_share(fixed[1000:1500]):.3f}"
    )
    assert abs(pro_share(live[-1000:]) - target) <= 0.05
    assert abs(pro_share(fixed[-1000:]) - target) > 0.15  # the shipped calibration drifts
    assert abs(pro_share(live[1000:1500]) - target) <= 0.05  # and held before the shift too


@pytest.fixture
def calibration_redis(redis_server: RedisServer) -> Iterator[str]:
    url = f"redis://127.0.0.1:{redis_server.port}/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


async def test_redis_window_is_shared_between_processes(calibration_redis: str) -> None:
    one, two = open_controls(calibration_redis, {}), open_controls(calibration_redis, {})
    two.calibration.refresh_s = 0
    for i in range(WARMUP):
        await one.calibration.seen(POLICY, "auto-economy", i / WARMUP, "flash")
    found = await two.calibration.thresholds(POLICY)
    assert dict(found["auto-economy"].steps)["pro"] == pytest.approx((WARMUP - 24) / WARMUP)
    assert len(await two.calibration.window.recent("auto-economy")) == WARMUP
    other = open_controls(calibration_redis, {}, namespace="another-upstream")
    assert await other.calibration.window.recent("auto-economy") == []
    for controls in (one, two, other):
        await controls.aclose()


async def test_redis_outage_falls_back_to_this_process_window() -> None:
    shared = store.open_store(f"redis://127.0.0.1:{free_port()}/0")
    assert shared is not None
    window = RedisScoreWindow(shared)
    await window.add("auto-economy", 0.7, "pro")
    assert await window.recent("auto-economy") == [(0.7, "pro")]


def test_two_instances_on_one_redis_report_one_window(
    calibration_redis: str,
    sim: RunningSimulator,
    upstream_env: None,
) -> None:
    settings = settings_for(sim, redis_url=calibration_redis, policy_poll_seconds=0)
    rng = random.Random(3)
    with (
        serve_app(settings, build_deps(settings)) as one,
        serve_app(settings, build_deps(settings)) as two,
    ):
        for i in range(20):
            body = {
                "model": "auto-economy",
                "messages": [{"role": "user", "content": prompt(rng, i % 2 == 0)}],
            }
            answer = httpx.post((one, two)[i % 2] + "/v1/chat/completions", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
        reports = [httpx.get(base + "/v1/stats", timeout=10).json() for base in (one, two)]
    for report in reports:
        economy = report["calibration"]["auto-economy"]
        assert economy["observed"] == 20  # both instances' requests, in either instance's view
        assert economy["warming_up"] is True
        pro = economy["tiers"]["pro"]
        assert pro["target"] == 0.12
        assert 0.0 <= pro["actual"] <= 1.0
        assert pro["threshold"] == pytest.approx(load_classifier().threshold_for_share(0.12))
        assert "auto" not in report["calibration"]  # fixed thresholds: nothing to report
