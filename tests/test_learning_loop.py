"""Learning from traffic, end to end: real processes (redis-server, the simulated DeepSeek with a
ground truth, flashpro with a learning policy), the openai SDK as the client.

A traffic shift on a `calibration: live` alias: the measured Pro share comes back to the
policy's share, where the calibration set's thresholds drift far from it.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import (
    ROOT,
    STARTUP_DEADLINE_S,
    UPSTREAM_KEY,
    RedisServer,
    flashpro_process,
    free_port,
    http_ok,
    wait_until,
)
from tests.test_calibration import FIXED_ALIAS, pro_share, prompt

LEARNING_ALIAS = "auto"  # fixed thresholds: its scores are what the refit changes
LIVE_ALIAS = "auto-economy"  # calibration: live, shares {pro: 0.12}
LIVE_SHARE = 0.12
FIXED = "economy-fixed"  # the same shares with the calibration set's thresholds
CLIENTS = 8
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
  max_in_flight: 128
  timeout_s: 60
"""


@dataclass
class Loop:
    proxy: str
    simulator: str
    redis_url: str


@contextmanager
def simulator_process(port: int) -> Iterator[str]:
    """`flashpro simulate-upstream` with the domain's hidden difficulty as its ground truth."""
    args = [
        sys.executable,
        "-m",
        "router",
        "simulate-upstream",
        "--port",
        str(port),
        "--speed",
        "0",
        "--api-key",
        UPSTREAM_KEY,
        "--truth",
        "tests.learning_domain:hidden_difficulty",
        "--judge-noise",
        "0.1",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if process.poll() is not None:
                output.seek(0)
                raise RuntimeError(
                    f"simulate-upstream exited {process.returncode}: {output.read()}"
                )
            return http_ok(base + "/_sim/stats")

        try:
            wait_until(ready, timeout_s=STARTUP_DEADLINE_S, what="simulate-upstream")
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def loop(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    policy = tmp_path_factory.mktemp("learning") / "policy.yaml"
    default = (ROOT / "policies" / "default.yaml").read_text()
    policy.write_text(default.replace("\naliases:\n", "\naliases:" + FIXED_ALIAS, 1) + LEARNING)
    with simulator_process(free_port()) as simulator:
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
