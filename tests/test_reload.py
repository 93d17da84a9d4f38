"""Hot reload: an edited policy takes effect without a restart; an invalid edit does not."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from router.admission import route
from router.http.reload import hot_reload
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier, load_classifier
from router.routing.policy import Policy, load_policy
from router.routing.routed import Routing, RoutingHolder
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from router.state.reasoning import ReasoningMemory
from router.upstream.base import LiteLLMUpstream
from tests.conftest import UPSTREAM_KEY, serve_app, settings_for, wait_until

ROOT = Path(__file__).resolve().parents[1]
FLASH_FOR_ALL = """
  - name: everything-on-flash
    when: {model: auto}
    then: {tier: flash}
"""


def tier_of(base: str) -> str:
    response = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "Prove it."}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-flashpro-tier"]


def readyz(base: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(base + "/readyz").json()
    return body


def with_rule(text: str, rule: str) -> str:
    return text.replace("rules:\n", "rules:" + rule, 1)


def test_edited_policy_takes_effect_and_invalid_edit_does_not(
    tmp_path: Path, sim: RunningSimulator, upstream_env: None
) -> None:
    original = (ROOT / "policies" / "default.yaml").read_text()
    path = tmp_path / "policy.yaml"
    path.write_text(original)
    policy, version = load_policy(path)
    classifier = FixedScoreClassifier(score=0.99, reasoning=True)
    deps = Deps(
        routing=Routing.build(policy, version, classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=sim.url,
    )
    settings = settings_for(sim, policy=path, policy_poll_seconds=0.05)
    with serve_app(settings, deps) as base:
        assert tier_of(base) == "pro-max"
        assert readyz(base)["policy_version"] == version
        assert readyz(base)["policy_file"] == str(path)

        path.write_text(with_rule(original, FLASH_FOR_ALL))
        wait_until(lambda: readyz(base)["policy_version"] != version, 10, "the reload")
        edited = readyz(base)["policy_version"]
        assert tier_of(base) == "flash"
        assert readyz(base)["policy_reload_error"] is None

        broken = FLASH_FOR_ALL.replace("tier: flash", "tier: turbo")
        path.write_text(with_rule(original, broken))
        wait_until(lambda: readyz(base)["policy_reload_error"] is not None, 10, "the error")
        status = readyz(base)
        assert status["policy_version"] == edited
        assert "rules[0].then.tier: unknown tier 'turbo'" in str(status["policy_reload_error"])
        assert tier_of(base) == "flash"

        path.write_text(with_rule(original, FLASH_FOR_ALL))  # back to the live policy's text
        wait_until(lambda: readyz(base)["policy_reload_error"] is None, 10, "the error to clear")
        assert readyz(base)["policy_version"] == edited


async def test_sighup_reloads_without_polling(tmp_path: Path) -> None:
    original = (ROOT / "policies" / "default.yaml").read_text()
    path = tmp_path / "policy.yaml"
    path.write_text(original)
    policy, version = load_policy(path)
    classifier = FixedScoreClassifier()

    def build(policy: Policy, version: str) -> Routing:
        return Routing.build(policy, version, classifier, {})

    holder = RoutingHolder(build(policy, version))
    async with hot_reload(holder, path, build, interval_s=0):
        path.write_text(with_rule(original, FLASH_FOR_ALL))
        await asyncio.sleep(0.05)
        assert holder.current.version == version  # polling is off
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if holder.current.version != version:
                break
    assert holder.current.version != version
    assert holder.current.policy.rules[0].name == "everything-on-flash"


async def test_a_policy_reload_keeps_the_live_classifier(tmp_path: Path) -> None:
    original = (ROOT / "policies" / "default.yaml").read_text()
    path = tmp_path / "policy.yaml"
    path.write_text(original)
    policy, version = load_policy(path)
    started = Routing.build(policy, version, FixedScoreClassifier(0.1), {}, "shipped-a")
    holder = RoutingHolder(started)
    learned = FixedScoreClassifier(0.9)
    holder.swap(started.with_classifier(learned, "learned-b", {}))

    def build(policy: Policy, version: str) -> Routing:
        return holder.current.with_policy(policy, version, {})

    async with hot_reload(holder, path, build, interval_s=0) as reloader:
        path.write_text(with_rule(original, FLASH_FOR_ALL))
        assert reloader is not None and reloader.check(force=True)
    assert holder.current.version != version
    assert holder.current.classifier is learned
    assert holder.current.classifier_version == "learned-b"


def test_thresholds_follow_the_classifier_and_a_swap_scores_anew() -> None:
    policy, version = load_policy(ROOT / "policies" / "default.yaml")
    low, shipped = FixedScoreClassifier(0.1), load_classifier()
    deps = Deps(
        routing=Routing.build(policy, version, low, {}, "shipped-a"),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=None,
    )
    request = ChatRequest(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert route(deps, request, {}).assessment.score == 0.1
    swapped = deps.live.with_classifier(shipped, "learned-b", {})
    deps.holder.swap(swapped)
    assert deps.classifier is shipped
    rescored = route(deps, request, {}).assessment.score  # the same request object
    assert rescored == shipped.assess(request).score != 0.1
    shares = policy.aliases["auto"].shares or {}
    steps = dict(swapped.thresholds["auto"].steps)
    assert shares and all(  # thresholds come from the swapped-in calibration
        steps[tier] == shipped.threshold_for_share(share) != 1 - share
        for tier, share in shares.items()
    )
