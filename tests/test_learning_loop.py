"""Learning from traffic, end to end: real processes (redis-server, the simulated DeepSeek with a
ground truth, flashpro with a learning policy), the openai SDK as the client.

Traffic from a domain the shipped classifier misreads (tests/learning_domain.py) is replayed;
shadow comparisons label it with the simulated judge; `flashpro learn` refits and promotes; the
running proxy picks the new classifier up; routing quality against the simulator's truth (APGR
on held-out prompts of the domain, scores from POST /v1/route) rises. Then a traffic shift on a
`calibration: live` alias: the measured Pro share comes back to the policy's share.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis

from router.offline.evaluate import apgr, routing_curve
from tests.conftest import (
    ROOT,
    UPSTREAM_KEY,
    RedisServer,
    flashpro_process,
    router_process,
    wait_until,
)
from tests.learning_domain import expected_quality, fit_prompts, held_out_prompts
from tests.test_calibration import FIXED_ALIAS, pro_share, prompt

LEARNING_ALIAS = "auto"  # fixed thresholds: its scores are what the refit changes
LIVE_ALIAS = "auto-economy"  # calibration: live, shares {pro: 0.12}
LIVE_SHARE = 0.12
FIXED = "economy-fixed"  # the same shares with the calibration set's thresholds
REPLAYED = 900  # fit prompts replayed through the proxy (each one compared)
MIN_LABELS = 500  # flashpro learn promotes from about 500 on this domain (bench/learning.py)
CLIENTS = 8
LABELS_KEY = "flashpro:v1:learning:labels"  # the label store (a sorted set)
LIVE_MODEL_KEY = "flashpro:v1:models:live"  # the promoted classifier's version
LEARNING = f"""
learning:
  sample_rate: 1.0
  floor: 1.0
  near_threshold: 1.0
  max_per_minute: 100000
  daily_budget_usd: 1000
  judge_tier: pro
  compare: [flash, pro]
  aliases: [{LEARNING_ALIAS}]
  max_in_flight: 1000
  timeout_s: 60
"""


@dataclass
class Loop:
    proxy: str
    simulator: str
    redis_url: str


@contextmanager
def simulator_process() -> Iterator[str]:
    """`flashpro simulate-upstream` with the domain's hidden difficulty as its ground truth."""
    args = ["simulate-upstream", "--speed", "0", "--api-key", UPSTREAM_KEY]
    args += ["--truth", "tests.learning_domain:hidden_difficulty", "--judge-noise", "0.1"]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with router_process(args, env, "/_sim/stats") as running:
        yield running.base


@pytest.fixture(scope="module")
def loop(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    policy = tmp_path_factory.mktemp("learning") / "policy.yaml"
    default = (ROOT / "policies" / "default.yaml").read_text()
    policy.write_text(default.replace("\naliases:\n", "\naliases:" + FIXED_ALIAS, 1) + LEARNING)
    with simulator_process() as simulator:
        env = {
            "DEEPSEEK_API_BASE": simulator,
            "DEEPSEEK_API_KEY": UPSTREAM_KEY,
            "REDIS_URL": redis_url,
            "FLASHPRO_POLICY_POLL_SECONDS": "0.5",
            "FLASHPRO_ACCESS_LOG": "false",
        }
        args = ["--policy", str(policy), "--log-level", "warning"]
        with flashpro_process(args, env, ready_s=180) as proxy:
            yield Loop(proxy.base, simulator, redis_url)
    redis.Redis.from_url(redis_url).flushdb()


async def routes(base: str, alias: str, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """How the running proxy would route each prompt (POST /v1/route): score, tier, rule."""
    limit = asyncio.Semaphore(CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(text: str) -> dict[str, Any]:
            body = {"model": alias, "messages": [{"role": "user", "content": text}]}
            async with limit:
                answer = await client.post("/v1/route", json=body)
            answer.raise_for_status()
            decision: dict[str, Any] = answer.json()
            return decision

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def scores(base: str, prompts: Sequence[str]) -> list[float]:
    return [float(d["score"]) for d in asyncio.run(routes(base, LEARNING_ALIAS, prompts))]


async def replay(base: str, model: str, prompts: Sequence[str]) -> list[str]:
    """Send each prompt as a chat request with the openai SDK; the tiers that served them."""
    limit = asyncio.Semaphore(CLIENTS)
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)

    async def one(text: str) -> str:
        async with limit:
            reply = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": text}]
            )
        assert reply.parse().choices[0].message.content
        return reply.headers["x-flashpro-tier"]

    try:
        return list(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await client.close()


def routing_apgr(scores: Sequence[float], prompts: Sequence[str]) -> float:
    strong, weak = expected_quality(prompts)
    return apgr(routing_curve(scores, strong, weak))


def comparisons_done(base: str) -> bool:
    """No shadow comparison is running any more (GET /v1/stats)."""
    learning = httpx.get(base + "/v1/stats", timeout=10).json()["learning"]
    return bool(learning["in_flight"] == 0)


def classifier_version(base: str) -> str:
    return str(httpx.get(base + "/readyz", timeout=10).json()["classifier_version"])


def test_learning_from_judged_traffic_raises_routing_quality(loop: Loop) -> None:
    held = held_out_prompts()
    shipped = classifier_version(loop.proxy)
    assert shipped.startswith("shipped-")
    before = routing_apgr(scores(loop.proxy, held), held)

    replayed = random.Random(5).sample(fit_prompts(), REPLAYED)
    asyncio.run(replay(loop.proxy, LEARNING_ALIAS, replayed))
    store = redis.Redis.from_url(loop.redis_url, decode_responses=True)
    # a deadline, not a pause: 900 comparisons take about a minute here, far longer under load
    wait_until(lambda: comparisons_done(loop.proxy), timeout_s=900, what="the comparisons")
    labels = store.zcard(LABELS_KEY)
    learning = httpx.get(loop.proxy + "/v1/stats", timeout=10).json()["learning"]
    assert labels >= MIN_LABELS, learning  # what became of the comparisons

    learned = subprocess.run(
        [sys.executable, "-m", "router", "learn", "--redis-url", loop.redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert learned.returncode == 0, learned.stdout + learned.stderr
    live = str(store.get(LIVE_MODEL_KEY))
    assert live.startswith("learned-"), learned.stdout
    wait_until(
        lambda: classifier_version(loop.proxy) == live,
        timeout_s=60,
        what="the proxy to load the promoted classifier",
    )
    after = routing_apgr(scores(loop.proxy, held), held)
    stats = httpx.get(loop.proxy + "/v1/stats", timeout=10).json()["learning"]
    spend = stats["spend_usd"]
    print(
        f"\nAPGR against the simulator's truth on {len(held)} held-out prompts: shipped "
        f"{before:.3f}, learned {after:.3f}; {labels} labels from {REPLAYED} requests, judges "
        f"agreed on {stats['agreement']:.0%}, simulated spend: shadow answers "
        f"${spend['shadow']:.2f}, judge ${spend['judge']:.2f}; failed {learning['failed']}, "
        f"skipped {learning['skipped']}\n{learned.stdout}"
    )
    assert after - before >= 0.1


def test_live_calibration_keeps_the_pro_share_after_the_traffic_mix_changes(loop: Loop) -> None:
    rng = random.Random(11)
    easy_mix = [prompt(rng, rng.random() < 0.1) for _ in range(300)]
    hard_mix = [prompt(rng, rng.random() < 0.9) for _ in range(3000)]
    asyncio.run(replay(loop.proxy, LIVE_ALIAS, easy_mix))
    served = asyncio.run(replay(loop.proxy, LIVE_ALIAS, hard_mix))
    share = pro_share(served[-1000:])
    fixed = pro_share([d["tier"] for d in asyncio.run(routes(loop.proxy, FIXED, hard_mix[-1000:]))])
    print(
        f"\nPro share of the last 1,000 requests after the shift: live {share:.3f}, "
        f"fixed thresholds {fixed:.3f} (target {LIVE_SHARE})"
    )
    assert abs(share - LIVE_SHARE) <= 0.05
    assert abs(fixed - LIVE_SHARE) > 0.15  # the mix did change: the calibration set's drift
