"""Retries, fallbacks and circuit breakers: the pure chain and delays, `Resilience` with fake
calls, and end to end against the simulator's fault queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.app import build_deps
from router.errors import (
    ContextTooLong,
    FlashproError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamBalanceExhausted,
    UpstreamBusy,
    UpstreamError,
    UpstreamQueued,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamSaturated,
    UpstreamTimeout,
)
from router.pipeline import Deps
from router.routing.decision import Decision
from router.routing.limits import Breaker, Group, Retries
from router.routing.policy import load_policy
from router.simulator.server import RunningSimulator
from router.upstream.base import Chunk, Completion, Upstream, UpstreamCall
from router.upstream.resilience import Resilience, Trail, chain, delay_s
from tests.conftest import HOSTILE_FIELDS, UPSTREAM_KEY, serve_app, settings_for
from tests.fault_policy import write_policy

POLICY, _ = load_policy(None)


def decision(tier: str = "pro-max") -> Decision:
    spec = POLICY.tiers[tier]
    return Decision(None, tier, spec.model, spec.thinking, spec.reasoning_effort, 0.5, "r", "why")


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("pro-max", ["pro-max", "pro", "flash"]),
        ("pro", ["pro", "flash"]),
        ("flash", ["flash", "pro"]),
    ],
)
def test_default_chain_falls_back_down_then_flash_up(tier: str, expected: list[str]) -> None:
    assert chain(POLICY, tier) == expected


def test_policy_fallbacks_replace_the_default_chain() -> None:
    policy = POLICY.model_copy(update={"fallbacks": {"pro-max": ["flash"]}})
    assert chain(policy, "pro-max") == ["pro-max", "flash"]
    assert chain(policy, "pro") == ["pro"]


def test_chain_skips_tiers_the_group_may_not_use() -> None:
    groups = {"interns": Group(forbidden_tiers=["pro"])}
    policy = POLICY.model_copy(update={"groups": groups})
    assert chain(policy, "pro-max", "interns") == ["pro-max", "flash"]


def test_fallback_to_an_unknown_tier_is_a_policy_error() -> None:
    from router.routing.policy import PolicyError, parse_policy

    text = Path(__file__).parents[1].joinpath("policies/default.yaml").read_text()
    with pytest.raises(PolicyError, match=r"fallbacks\.pro"):
        parse_policy(text + "\nfallbacks: {pro: [nope]}\n")


def test_delay_honours_retry_after_up_to_the_cap_else_backs_off() -> None:
    retries = Retries(backoff_initial_ms=100, backoff_max_ms=300, retry_after_max_s=2)
    assert delay_s(retries, 0, UpstreamRateLimited("x", headers={"Retry-After": "1.5"})) == 1.5
    assert delay_s(retries, 0, UpstreamRateLimited("x", headers={"Retry-After": "60"})) == 2
    assert [delay_s(retries, n, UpstreamError("x")) for n in range(4)] == [0.1, 0.2, 0.3, 0.3]


def test_trail_headers_name_the_fallback() -> None:
    assert Trail().headers() == {"x-flashpro-attempts": "1"}
    trail = Trail(3, "pro-max->pro (upstream_rate_limited)")
    assert trail.headers()["x-flashpro-fallback"] == "pro-max->pro (upstream_rate_limited)"


@dataclass
class Script:
    """Fake upstream attempts: per tier, a list of errors to raise before answering."""

    failures: dict[str, list[FlashproError]]
    calls: list[str] = field(default_factory=list)

    async def __call__(self, chosen: Decision) -> str:
        self.calls.append(chosen.tier)
        pending = self.failures.get(chosen.tier, [])
        if pending:
            raise pending.pop(0)
        return f"answer from {chosen.tier}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def fast_policy(**update: Any) -> Any:
    retries = Retries(max_attempts=2, backoff_initial_ms=10, backoff_max_ms=40, retry_after_max_s=1)
    return POLICY.model_copy(update={"retries": retries, **update})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_rate_limited_tier_is_retried_then_falls_back() -> None:
    clock = Clock()
    limited = UpstreamRateLimited("slow down", headers={"Retry-After": "0.5"})
    script = Script({"pro-max": [limited, UpstreamRateLimited("again")]})
    value, chosen, trail = run(
        Resilience(clock, clock.sleep).call(fast_policy(), decision(), script)
    )
    assert value == "answer from pro"
    assert chosen.tier == "pro" and chosen.model == POLICY.tiers["pro"].model
    assert script.calls == ["pro-max", "pro-max", "pro"]
    assert clock.slept == [0.5]  # Retry-After honoured between the two pro-max calls
    assert trail == Trail(3, "pro-max->pro (upstream_rate_limited)")


def test_a_retry_that_succeeds_needs_no_fallback() -> None:
    clock = Clock()
    script = Script({"pro": [UpstreamTimeout("late")]})
    value, chosen, trail = run(
        Resilience(clock, clock.sleep).call(fast_policy(), decision("pro"), script)
    )
    assert (value, chosen.tier, trail) == ("answer from pro", "pro", Trail(2))
    assert clock.slept == [0.01]


@pytest.mark.parametrize(
    "error",
    [UpstreamRejected("bad", status=400), UpstreamAuthFailed("key"), InvalidRequest("x")],
)
def test_client_errors_are_not_retried(error: FlashproError) -> None:
    script = Script({"pro-max": [error]})
    with pytest.raises(type(error)):
        run(Resilience().call(fast_policy(), decision(), script))
    assert script.calls == ["pro-max"]


DETERMINISTIC: list[FlashproError] = [
    UpstreamRejected("bad", status=400),
    UpstreamRejected("no such model", status=404),
    UpstreamRejected("too large", status=413),
    UpstreamRejected("bad parameter", status=422),
    ContextTooLong("long"),
]
HEALTH: list[FlashproError] = [
    UpstreamError("500"),
    UpstreamTimeout("late"),
    UpstreamRateLimited("429"),
    UpstreamError("connection reset"),
]


def test_only_failures_that_say_something_of_the_tiers_health_open_its_breaker() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=2, open_seconds=30), fallbacks={})
    resilience = Resilience(clock, clock.sleep)
    for error in DETERMINISTIC * 3:  # a client sending bad requests again and again
        with pytest.raises(type(error)):
            run(resilience.call(policy, decision("pro"), Script({"pro": [error]})))
    assert resilience.circuit("pro").state == "closed"
    healthy = Script({})
    assert run(resilience.call(policy, decision("pro"), healthy))[0] == "answer from pro"
    for error in HEALTH:
        fresh = Resilience(clock, clock.sleep)
        with pytest.raises(type(error)):
            run(fresh.call(policy, decision("pro"), Script({"pro": [error, error]})))
        assert fresh.circuit("pro").state == "open", error


def test_a_queued_tier_falls_back_without_a_retry() -> None:
    clock = Clock()
    script = Script({"pro-max": [UpstreamQueued("no first byte"), UpstreamQueued("again")]})
    value, _, trail = run(Resilience(clock, clock.sleep).call(fast_policy(), decision(), script))
    assert value == "answer from pro" and script.calls == ["pro-max", "pro"]
    assert clock.slept == [] and trail == Trail(2, "pro-max->pro (upstream_timeout)")


def test_a_full_connection_pool_is_raised_at_once_and_counts_for_nothing() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=1, open_seconds=5))
    resilience = Resilience(clock, clock.sleep)
    run(resilience.call(policy, decision("pro"), Script({"pro": [UpstreamError("down")]})))
    clock.now += 10  # half-open: the next call is the probe
    busy = Script({"pro": [UpstreamBusy("full", headers={"Retry-After": "1"})]})
    with pytest.raises(UpstreamBusy):
        run(resilience.call(policy, decision("pro"), busy))
    assert busy.calls == ["pro"]
    assert resilience.circuit("pro").state == "open"  # not probing: another call may probe
    assert run(resilience.call(policy, decision("pro"), Script({})))[0] == "answer from pro"


def test_when_every_tier_fails_the_last_error_is_raised() -> None:
    clock = Clock()
    script = Script({t: [UpstreamError(f"{t} down")] * 2 for t in POLICY.tiers})
    with pytest.raises(UpstreamError, match="flash down"):
        run(Resilience(clock, clock.sleep).call(fast_policy(), decision(), script))
    assert script.calls == ["pro-max", "pro-max", "pro", "pro", "flash", "flash"]


def test_breaker_opens_skips_the_tier_then_probes_it_back() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=2, open_seconds=5))
    resilience = Resilience(clock, clock.sleep)
    script = Script({"pro": [UpstreamError("down")] * 3})
    # two consecutive failures open pro's circuit; the request falls back to flash
    _, chosen, trail = run(resilience.call(policy, decision("pro"), script))
    assert chosen.tier == "flash" and resilience.circuit("pro").state == "open"
    # while open, pro is skipped without a call
    script.calls.clear()
    _, chosen, trail = run(resilience.call(policy, decision("pro"), script))
    assert script.calls == ["flash"]
    assert trail == Trail(1, "pro->flash (circuit_open)")
    # after open_seconds one probe goes through; it fails, so the circuit opens again at once
    clock.now += 10
    script.calls.clear()
    run(resilience.call(policy, decision("pro"), script))
    assert script.calls == ["pro", "flash"]
    assert resilience.circuit("pro").state == "open"
    # the next probe succeeds and closes the circuit
    clock.now += 10
    script.calls.clear()
    _, chosen, _ = run(resilience.call(policy, decision("pro"), script))
    assert script.calls == ["pro"] and chosen.tier == "pro"
    assert resilience.circuit("pro").state == "closed"


def test_every_circuit_open_fails_fast_with_503() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=1, open_seconds=30), fallbacks={})
    resilience = Resilience(clock, clock.sleep)
    script = Script({"pro": [UpstreamError("down")]})
    with pytest.raises(UpstreamError):
        run(resilience.call(policy, decision("pro"), script))
    with pytest.raises(ServiceUnavailable) as caught:
        run(resilience.call(policy, decision("pro"), script))
    assert caught.value.headers["Retry-After"] == "30"
    assert script.calls == ["pro"]


def test_a_cancelled_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=1, open_seconds=1), fallbacks={})
    resilience = Resilience(clock, clock.sleep)
    with pytest.raises(UpstreamError):
        run(resilience.call(policy, decision("pro"), Script({"pro": [UpstreamError("x")]})))
    clock.now += 1

    async def cancelled(_: Decision) -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run(resilience.call(policy, decision("pro"), cancelled))
    assert run(resilience.call(policy, decision("pro"), Script({})))[0] == "answer from pro"


# End to end: flashpro (in-process, production dependencies) -> the simulator's fault queue.


@pytest.fixture
def resilient(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> Iterator[tuple[str, Deps]]:
    policy = write_policy(tmp_path)
    settings = settings_for(simulator, policy=policy)
    deps = build_deps(settings)
    with serve_app(settings, deps) as base:
        yield base, deps
    httpx.delete(simulator.url + "/_sim/faults")


def queue(sim: RunningSimulator, **fault: Any) -> None:
    assert httpx.post(sim.url + "/_sim/faults", json=fault).status_code == 200


def chat(base: str, model: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=10)


def test_rate_limited_pro_max_falls_back_to_pro_and_says_so(
    resilient: tuple[str, Deps], sim: RunningSimulator
) -> None:
    base, _ = resilient
    queue(sim, count=2, model="deepseek-v4-pro", status=429)
    response = chat(base, "pro-max", "fallback please", temperature=0)
    assert response.status_code == 200, response.text
    assert response.headers["x-flashpro-tier"] == "pro"
    assert response.headers["x-flashpro-fallback"] == "pro-max->pro (upstream_rate_limited)"
    assert response.headers["x-flashpro-attempts"] == "3"
    efforts = [r.body.get("reasoning_effort") for r in sim.requests() if r.body]
    assert efforts == ["max", "max", "high"]
    # the answer was cached under pro, the tier that produced it: pro hits, pro-max does not
    assert chat(base, "pro", "fallback please", temperature=0).headers["x-flashpro-cache"] == "hit"
    again = chat(base, "pro-max", "fallback please", temperature=0)
    assert again.headers["x-flashpro-cache"] == "miss"
    assert again.headers["x-flashpro-tier"] == "pro-max"


def test_fallback_answer_is_priced_at_the_tier_that_answered(
    resilient: tuple[str, Deps], sim: RunningSimulator
) -> None:
    base, _ = resilient
    queue(sim, count=2, model="deepseek-flash", status=503)
    response = chat(base, "flash", "priced")
    assert response.headers["x-flashpro-tier"] == "pro"
    assert response.headers["x-flashpro-fallback"] == "flash->pro (upstream_overloaded)"
    usage = response.json()["usage"]
    prices = POLICY.prices_at("pro", datetime.now(UTC))
    miss = usage["prompt_tokens"] - usage.get("prompt_cache_hit_tokens", 0)
    expected = (
        miss * prices.input_usd_per_mtok
        + usage.get("prompt_cache_hit_tokens", 0) * prices.cached_input_usd_per_mtok
        + usage["completion_tokens"] * prices.output_usd_per_mtok
    ) / 1e6
    assert float(response.headers["x-flashpro-cost-usd"]) == pytest.approx(expected, abs=1e-8)


def test_client_errors_from_the_upstream_are_not_retried(
    resilient: tuple[str, Deps], sim: RunningSimulator
) -> None:
    base, _ = resilient
    response = chat(base, "pro-max", "bad [[sim:status=422]]")
    assert response.status_code == 422
    assert len([r for r in sim.requests() if r.path.endswith("/chat/completions")]) == 1


def test_stream_failing_before_its_first_byte_falls_back(
    resilient: tuple[str, Deps], sim: RunningSimulator
) -> None:
    base, _ = resilient
    queue(sim, count=2, model="deepseek-v4-pro", status=500)
    body = {"model": "pro-max", "messages": [{"role": "user", "content": "s"}], "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["x-flashpro-tier"] == "pro"
        assert response.headers["x-flashpro-fallback"] == "pro-max->pro (upstream_error)"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"error"' in event for event in events)


def test_transport_fields_stay_out_of_the_fallback_call(
    resilient: tuple[str, Deps], sim: RunningSimulator
) -> None:
    base, _ = resilient
    queue(sim, count=2, model="deepseek-v4-pro", status=429)
    response = chat(base, "pro-max", "hostile", **HOSTILE_FIELDS)
    assert response.status_code == 200 and response.headers["x-flashpro-tier"] == "pro"
    for received in sim.requests():
        assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "x-evil" not in received.headers
        assert received.body is not None
        assert not set(HOSTILE_FIELDS) & set(received.body)


@dataclass
class ClosingUpstream:
    """Wraps the real upstream and records when each stream it opened was closed."""

    inner: Upstream
    closed_at: list[float] = field(default_factory=list)

    async def complete(self, call: UpstreamCall) -> Completion:
        return await self.inner.complete(call)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        return self._watched(await self.inner.stream(call))

    async def _watched(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self.closed_at.append(time.monotonic())


def test_client_disconnect_closes_the_upstream_stream(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(simulator, policy=write_policy(tmp_path, timeout_s=30))
    deps = build_deps(settings)
    watched = ClosingUpstream(deps.upstream)
    deps = replace(deps, upstream=watched, holder=deps.holder)
    body = {
        "model": "flash",
        "messages": [{"role": "user", "content": "long answer please [[sim:slow=50]]"}],
        "stream": True,
        "max_tokens": 2000,
    }
    with serve_app(settings, deps) as base:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=10) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ")
            left = time.monotonic()
        deadline = time.monotonic() + 3
        while not watched.closed_at and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watched.closed_at, "the upstream stream was still open after the client left"
        assert watched.closed_at[0] - left < 2.0


def test_an_exhausted_balance_is_neither_retried_nor_fallen_back_but_opens_the_breaker() -> None:
    clock = Clock()
    policy = fast_policy(breaker=Breaker(failures=2, open_seconds=30))
    resilience = Resilience(clock, clock.sleep)
    for _ in range(2):
        script = Script({"pro": [UpstreamBalanceExhausted("no balance")]})
        with pytest.raises(UpstreamBalanceExhausted):
            run(resilience.call(policy, decision("pro"), script))
        assert script.calls == ["pro"]
    assert resilience.circuit("pro").state == "open"
    assert clock.slept == []


def test_a_saturated_tier_moves_on_without_touching_its_breaker() -> None:
    script = Script({"pro-max": [UpstreamSaturated("busy")]})
    resilience = Resilience()
    value, chosen, trail = run(resilience.call(fast_policy(), decision(), script))
    assert (value, chosen.tier) == ("answer from pro", "pro")
    assert trail.fallback == "pro-max->pro (upstream_saturated)"
    assert resilience.circuit("pro-max").failures == 0


def test_requests_with_images_fall_back_only_to_tiers_that_read_them() -> None:
    assert chain(POLICY, "flash", images=True) == ["flash"]
    assert chain(POLICY, "flash") == ["flash", "pro"]
