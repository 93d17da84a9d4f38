"""Live limits end to end: budgets (memory and a Redis ledger shared by two apps), latency
targets, the traffic-share cap and key groups."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from router.errors import InvalidRequest
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier, estimate_tokens
from router.routing.policy import parse_policy
from router.routing.routed import Routing
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.state.controls import Controls, caller_of, open_controls
from router.state.ledger import MemoryLedger
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import UPSTREAM_KEY, RedisServer, serve_app, settings_for, wait_until

HELLO = ChatRequest.model_validate(
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
)
DEFAULT_YAML = (Path(__file__).resolve().parents[1] / "policies" / "default.yaml").read_text()


def policy_text(extra: str) -> str:
    return DEFAULT_YAML + "\n" + extra


def deps_for(
    sim: RunningSimulator,
    extra: str,
    score: float = 0.99,
    reasoning: bool = True,
    controls: Controls | None = None,
) -> Deps:
    policy = parse_policy(policy_text(extra))
    classifier = FixedScoreClassifier(score=score, reasoning=reasoning)
    return Deps(
        routing=Routing.build(policy, "test", classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=sim.url,
        controls=controls or Controls(),
    )


def ask(
    base: str, text: str = "Prove it.", key: str = "client-key", **headers: str
) -> httpx.Response:
    return httpx.post(
        base + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


@pytest.fixture
def upstream(upstream_env: None, sim: RunningSimulator) -> RunningSimulator:
    return sim


def test_budget_exhausted_mid_run_downgrades(upstream: RunningSimulator) -> None:
    deps = deps_for(upstream, "budgets: {on_exhausted: downgrade, total: {usd_per_day: 0.000001}}")
    with serve_app(settings_for(upstream), deps) as base:
        first = ask(base)
        assert first.status_code == 200
        assert first.headers["x-flashpro-tier"] == "pro-max"
        second = ask(base)
        assert second.status_code == 200
        assert second.headers["x-flashpro-tier"] == "flash"
        assert second.headers["x-flashpro-rule"] == "budget:total"


def test_budget_exhausted_mid_run_rejects_with_429(upstream: RunningSimulator) -> None:
    deps = deps_for(upstream, "budgets: {on_exhausted: reject, per_key: {usd_per_month: 0.000001}}")
    with serve_app(settings_for(upstream), deps) as base:
        assert ask(base, key="alice").status_code == 200
        refused = ask(base, key="alice")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "insufficient_quota"
        assert error["code"] == "budget_exhausted"
        assert "per-key monthly budget is spent" in error["message"]
        assert int(refused.headers["retry-after"]) > 0
        assert ask(base, key="bob").status_code == 200  # another key has its own budget


@pytest.fixture
def ledger_redis(redis_server: RedisServer) -> Iterator[str]:
    url = f"redis://127.0.0.1:{redis_server.port}/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_two_instances_on_one_redis_stay_within_the_budget(
    upstream: RunningSimulator, ledger_redis: str
) -> None:
    limit = 0.002
    extra = f"budgets: {{on_exhausted: reject, total: {{usd_per_day: {limit}}}}}"
    in_flight = 8
    one = deps_for(upstream, extra, controls=open_controls(ledger_redis, {}))
    two = deps_for(upstream, extra, controls=open_controls(ledger_redis, {}))
    settings = settings_for(upstream)
    with serve_app(settings, one) as base_one, serve_app(settings, two) as base_two:

        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                gate = asyncio.Semaphore(in_flight)

                async def one_request(i: int) -> httpx.Response:
                    async with gate:
                        return await client.post(
                            (base_one, base_two)[i % 2] + "/v1/chat/completions",
                            json={
                                "model": "auto",
                                "messages": [{"role": "user", "content": f"Q{i}"}],
                            },
                            headers={"authorization": "Bearer k"},
                        )

                return await asyncio.gather(*(one_request(i) for i in range(120)))

        responses = asyncio.run(load())
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert served and refused
    assert len(served) + len(refused) == len(responses)
    costs = [float(r.headers["x-flashpro-cost-usd"]) for r in served]
    client = redis.Redis.from_url(ledger_redis)
    day_keys = list(client.scan_iter("flashpro:v1:spend:total:d:*"))
    recorded = float(client.get(day_keys[0]) or 0)
    client.close()
    assert recorded == pytest.approx(sum(costs), rel=1e-6)  # one ledger, every answer in it
    assert sum(costs) <= limit + in_flight * max(costs)


async def test_ledger_falls_back_to_memory_when_redis_is_down() -> None:
    controls = open_controls("redis://127.0.0.1:1/0", {})  # nothing listens there
    policy = parse_policy(policy_text("budgets: {total: {usd_per_day: 1.0}}"))
    caller = caller_of(policy, HELLO, {}, {})
    before = await controls.state_for(policy, caller)
    assert before.spent[0].day_usd == 0.0
    await controls.ledger.add(["total"], 0.25, 1_700_000_000.0)
    assert await controls.ledger.spent(["total"], 1_700_000_000.0) == [(0.25, 0.25)]
    await controls.aclose()


async def test_memory_ledger_keeps_days_and_months_apart() -> None:
    ledger = MemoryLedger()
    jan_1, jan_2 = 1_704_110_400.0, 1_704_196_800.0  # 2024-01-01 and -02, 12:00 UTC
    await ledger.add(["total"], 1.0, jan_1)
    await ledger.add(["total"], 2.0, jan_2)
    assert await ledger.spent(["total"], jan_2) == [(2.0, 3.0)]


def test_latency_header_keeps_pro_max_out(upstream: RunningSimulator) -> None:
    deps = deps_for(upstream, "")
    with serve_app(settings_for(upstream), deps) as base:
        assert ask(base).headers["x-flashpro-tier"] == "pro-max"
        # expected: pro-max 2500 + 3400/35 s = 99.6 s; pro 1200 + 1400/45 s = 32.3 s
        fast = ask(base, **{"x-flashpro-max-latency-ms": "60000"})
        assert fast.status_code == 200
        assert fast.headers["x-flashpro-tier"] == "pro"
        assert fast.headers["x-flashpro-rule"] == "latency"
        bad = ask(base, **{"x-flashpro-max-latency-ms": "soon"})
        assert bad.status_code == 400


def test_share_cap_holds_over_the_window(upstream: RunningSimulator) -> None:
    # every request is borderline Pro: score just above the pro threshold (1 - 0.30)
    extra = "share_cap: {tier: pro, max_share: 0.3, window_s: 600, margin: 0.1}"
    deps = deps_for(upstream, extra, score=0.72, reasoning=False)
    with serve_app(settings_for(upstream), deps) as base:
        tiers = [ask(base, text=f"q{i}").headers["x-flashpro-tier"] for i in range(40)]
    strong = sum(tier != "flash" for tier in tiers)
    assert 11 <= strong <= 13  # 30% of 40, give or take the request that crosses the cap
    assert tiers[0] == "pro"


async def test_share_cap_window_slides() -> None:
    controls = Controls()
    policy = parse_policy(policy_text("share_cap: {max_share: 0.3, window_s: 1}"))
    await controls.shares.add(True, 1, 100.0)
    assert await controls.shares.share(1, 100.5) == 1.0
    assert await controls.shares.share(1, 101.5) is None
    assert policy.share_cap is not None


def test_key_groups_get_their_alias_and_tiers(upstream: RunningSimulator) -> None:
    digest = hashlib.sha256(b"intern-key").hexdigest()
    extra = f"""
groups:
  interns: {{default_alias: auto-economy, forbidden_tiers: [pro-max]}}
keys:
  {digest}: interns
"""
    deps = deps_for(upstream, extra, score=0.99, reasoning=True)
    with serve_app(settings_for(upstream), deps) as base:
        intern = ask(base, key="intern-key")
        assert intern.headers["x-flashpro-tier"] == "pro"  # auto-economy never reaches Pro-Max
        pinned = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "pro-max", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": "Bearer intern-key"},
        )
        assert pinned.status_code == 404
        assert ask(base, key="someone-else").headers["x-flashpro-tier"] == "pro-max"


def test_latency_header_must_be_positive() -> None:
    policy = parse_policy(DEFAULT_YAML)
    with pytest.raises(InvalidRequest):
        caller_of(policy, HELLO, {"x-flashpro-max-latency-ms": "-5"}, {})


def test_off_peak_discount_applies_to_the_cost_header(upstream: RunningSimulator) -> None:
    extra = "off_peak: {windows_utc: ['00:00-24:00'], discount: 0.5}"
    deps = deps_for(upstream, extra)
    with serve_app(settings_for(upstream), deps) as base:
        response = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "pro", "messages": [{"role": "user", "content": "Price me off peak"}]},
        )
    usage = response.json()["usage"]
    hit = usage.get("prompt_cache_hit_tokens") or 0
    peak = parse_policy(DEFAULT_YAML).tiers["pro"].prices
    full = (
        hit * peak.cached_input_usd_per_mtok
        + (usage["prompt_tokens"] - hit) * peak.input_usd_per_mtok
        + usage["completion_tokens"] * peak.output_usd_per_mtok
    ) / 1e6
    assert float(response.headers["x-flashpro-cost-usd"]) == pytest.approx(full * 0.5, rel=1e-6)


def test_streamed_answers_are_charged_when_the_stream_ends(upstream: RunningSimulator) -> None:
    deps = deps_for(upstream, "budgets: {on_exhausted: downgrade, total: {usd_per_day: 0.000001}}")
    with serve_app(settings_for(upstream), deps) as base:
        body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "Go"}]}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as first:
            assert first.headers["x-flashpro-tier"] == "pro-max"
            assert "[DONE]" in first.read().decode()
        assert ask(base).headers["x-flashpro-rule"] == "budget:total"


async def test_redis_share_window_is_shared_between_processes(ledger_redis: str) -> None:
    one, two = open_controls(ledger_redis, {}), open_controls(ledger_redis, {})
    now = 1_800_000_000.0
    await one.shares.add(True, 600, now)
    await two.shares.add(False, 600, now + 1)
    await two.shares.add(False, 600, now + 2)
    assert await one.shares.share(600, now + 3) == pytest.approx(1 / 3)
    assert await two.shares.share(600, now + 700) is None  # the window slid past them
    await one.aclose()
    await two.aclose()


def test_a_stream_the_client_abandons_is_still_charged(upstream: RunningSimulator) -> None:
    controls = Controls()
    budget = "budgets: {on_exhausted: downgrade, total: {usd_per_day: 100}}"
    deps = deps_for(upstream, budget, controls=controls)
    body = {
        "model": "auto",
        "stream": True,
        "messages": [{"role": "user", "content": "A long proof please [[sim:slow=50]]"}],
    }

    def spent() -> float:
        return asyncio.run(controls.ledger.spent(["total"], controls.now()))[0][0]

    with serve_app(settings_for(upstream), deps) as base:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as cut:
            assert cut.headers["x-flashpro-tier"] == "pro-max"
            lines = cut.iter_lines()
            events = [next(lines) for _ in range(6)]  # a few events, then hang up
        assert any(line.startswith("data: ") for line in events)
        wait_until(lambda: spent() > 0, timeout_s=10, what="the cut stream charged")
    prices = deps.live.policy.tiers["pro-max"].prices
    prompt_tokens = estimate_tokens(ChatRequest.model_validate(body))
    prompt_only = prices.input_usd_per_mtok * prompt_tokens / 1e6
    # the prompt and the tokens streamed before the client left, no more than a few hundred
    assert prompt_only < spent() < prompt_only + prices.output_usd_per_mtok * 500 / 1e6


def test_route_explains_under_the_live_budget_without_spending(upstream: RunningSimulator) -> None:
    deps = deps_for(upstream, "budgets: {on_exhausted: downgrade, total: {usd_per_day: 0.000001}}")
    body = {"model": "auto", "messages": [{"role": "user", "content": "Prove it."}]}
    with serve_app(settings_for(upstream), deps) as base:
        for _ in range(3):  # explaining spends nothing
            before = httpx.post(base + "/v1/route", json=body, timeout=10).json()
            assert before["tier"] == "pro-max" and not before["rule"].startswith("budget")
        assert ask(base).headers["x-flashpro-tier"] == "pro-max"  # spends the whole budget
        after = httpx.post(base + "/v1/route", json=body, timeout=10).json()
    assert (after["tier"], after["rule"]) == ("flash", "budget:total")
