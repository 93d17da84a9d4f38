"""Budget holds through the pipeline: taken at admission, settled by the charge, given back on
failures and cache hits; and budgets while the shared ledger is unreachable (open or closed)."""

from __future__ import annotations

import os

import pytest

from router.admission import admit
from router.errors import FlashproError, ServiceUnavailable
from router.pipeline import Deps, cache_plan, complete
from router.routing.classify import FixedScoreClassifier
from router.routing.policy import parse_policy
from router.routing.routed import Routing
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.state.controls import Controls, open_controls
from router.state.ledger import MemoryLedger
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import UPSTREAM_KEY, free_port
from tests.test_controls import policy_text

NOW_DAY = 0  # index of the day amount in a ledger reading


def deps(sim_url: str | None, budgets: str, controls: Controls) -> Deps:
    policy = parse_policy(policy_text(f"budgets: {budgets}"))
    classifier = FixedScoreClassifier(score=0.99, reasoning=True)
    return Deps(
        routing=Routing.build(policy, "test", classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=sim_url,
        controls=controls,
    )


def chat(text: str, **extra: object) -> ChatRequest:
    body = {"model": "flash", "messages": [{"role": "user", "content": text}], **extra}
    return ChatRequest.model_validate(body)


def unreachable() -> Controls:
    return open_controls(f"redis://127.0.0.1:{free_port()}/0", {})  # nothing listens there


async def spent_today(controls: Controls) -> float:
    return (await controls.ledger.spent(["total"], controls.now()))[0][NOW_DAY]


async def test_an_answer_replaces_its_hold_with_its_cost(
    upstream_env: None, sim: RunningSimulator
) -> None:
    controls = Controls(ledger=MemoryLedger())
    served = deps(sim.url, "{on_exhausted: reject, total: {usd_per_day: 10}}", controls)
    routed = await admit(served, chat("hello"), {})
    assert routed.hold is not None and routed.hold.usd > 0
    assert await spent_today(controls) == pytest.approx(routed.hold.usd)  # held while in flight
    answer = await complete(served, routed)
    assert await spent_today(controls) == pytest.approx(answer.cost_usd)


async def test_a_failed_request_gives_its_hold_back(
    upstream_env: None, sim: RunningSimulator
) -> None:
    controls = Controls(ledger=MemoryLedger())
    served = deps(sim.url, "{on_exhausted: reject, total: {usd_per_day: 10}}", controls)
    routed = await admit(served, chat("refused [[sim:status=400]]"), {})
    assert routed.hold is not None
    with pytest.raises(FlashproError):
        await complete(served, routed)
    assert await spent_today(controls) == 0.0


async def test_a_cache_hit_gives_its_hold_back(upstream_env: None, sim: RunningSimulator) -> None:
    controls = Controls(ledger=MemoryLedger())
    served = deps(sim.url, "{on_exhausted: reject, total: {usd_per_day: 10}}", controls)
    request = chat("the same question", temperature=0)
    first = await admit(served, request, {})
    paid = await complete(served, first, cache_plan(served, first, {}))
    again = await admit(served, request, {})
    hit = await complete(served, again, cache_plan(served, again, {}))
    assert hit.cache == "hit"
    assert await spent_today(controls) == pytest.approx(paid.cost_usd)


async def test_a_reservation_that_finds_the_budget_taken_is_refused() -> None:
    controls = Controls(ledger=MemoryLedger())
    served = deps(None, "{on_exhausted: reject, total: {usd_per_day: 0.0001}}", controls)
    first = await admit(served, chat("one"), {})
    assert first.hold is not None and first.hold.usd >= 0.0001  # in flight: it takes it all
    with pytest.raises(FlashproError) as refused:
        await admit(served, chat("two"), {})
    assert refused.value.status == 429


async def test_a_reservation_that_finds_the_budget_taken_is_downgraded() -> None:
    controls = Controls(ledger=MemoryLedger())
    budgets = "{on_exhausted: downgrade, downgrade_to: flash, total: {usd_per_day: 0.001}}"
    served = deps(None, budgets, controls)
    first = await admit(served, chat("one", model="pro"), {})
    assert first.decision.tier == "pro" and first.hold is not None
    second = await admit(served, chat("two", model="pro"), {})
    assert second.decision.tier == "flash"
    assert second.decision.rule == "budget:total"
    assert second.hold is not None  # the downgraded answer is held too


async def test_budgets_that_fail_closed_refuse_while_the_ledger_is_unreachable() -> None:
    budgets = "{on_exhausted: reject, on_store_outage: closed, total: {usd_per_day: 10}}"
    served = deps(None, budgets, unreachable())
    with pytest.raises(ServiceUnavailable) as refused:
        await admit(served, chat("hello"), {})
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    assert "on_store_outage" in refused.value.message
    await served.controls.aclose()


async def test_budgets_that_fail_closed_downgrade_while_the_ledger_is_unreachable() -> None:
    budgets = "{on_exhausted: downgrade, on_store_outage: closed, total: {usd_per_day: 10}}"
    served = deps(None, budgets, unreachable())
    routed = await admit(served, chat("hello", model="pro"), {})
    assert routed.decision.tier == "flash"
    assert routed.decision.rule == "budget:total"
    await served.controls.aclose()


async def test_budgets_that_fail_open_keep_serving_while_the_ledger_is_unreachable() -> None:
    served = deps(None, "{on_exhausted: reject, total: {usd_per_day: 10}}", unreachable())
    routed = await admit(served, chat("hello", model="pro"), {})
    assert routed.decision.tier == "pro"
    assert routed.hold is not None  # held in this process until Redis is back
    await served.controls.aclose()
