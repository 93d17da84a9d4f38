"""Hot reload: an edited policy takes effect without a restart; an invalid edit does not."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from router.http.reload import hot_reload
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier
from router.routing.policy import Policy, load_policy
from router.routing.routed import Routing, RoutingHolder
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
        routing=Routing.build(policy, version, classifier.threshold_for_share, os.environ),
        classifier=classifier,
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
        return Routing.build(policy, version, classifier.threshold_for_share, {})

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
