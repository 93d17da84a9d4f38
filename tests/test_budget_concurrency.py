"""Budgets under concurrency: two `flashpro serve` processes on one Redis, 64 clients at once.
Admission holds each answer's expected cost atomically, so a budget is overshot by the
estimation error, not by everything in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.soak import chat_body
from router.simulator.server import RunningSimulator
from tests.conftest import UPSTREAM_KEY, RedisServer, flashpro_process, wait_until
from tests.fault_policy import write_policy

CLIENTS = 64
REFUSALS_PER_CLIENT = 8  # a refused client waits a moment and tries again, this many times


@dataclass
class Tally:
    """What the clients saw: costs of answers by tier, refusals, anything else."""

    costs: dict[str, list[float]] = field(default_factory=dict)
    refused: int = 0
    other: list[str] = field(default_factory=list)

    def spent(self, tier: str | None = None) -> float:
        return sum(c for t, costs in self.costs.items() if tier in (None, t) for c in costs)

    def matches(self, recorded: float) -> bool:
        """The ledger holds every answer once (cost headers keep 8 decimals)."""
        answers = sum(len(costs) for costs in self.costs.values())
        return abs(recorded - self.spent()) <= 1e-8 * (answers + 1)


def day_spend(url: str) -> float:
    """Today's total spend in the ledger (kept per upstream set: one here)."""
    day = datetime.now(UTC).strftime("%Y%m%d")
    client = redis.Redis.from_url(url)
    keys = client.keys(f"flashpro:v1:spend:*:total:d:{day}")
    assert len(keys) <= 1, keys
    return float(client.get(keys[0]) or 0) if keys else 0.0


@dataclass
class Pair:
    """Two `flashpro serve` processes on one Redis, reading one policy file (hot reloaded)."""

    bases: list[str]
    policy: Path
    redis_url: str

    def use(self, budgets: dict[str, Any]) -> None:
        """Switch both processes to a policy with these budgets, on an empty ledger."""
        before = {self.version(base) for base in self.bases}
        write_policy(self.policy.parent, timeout_s=30, budgets=budgets)
        wait_until(
            lambda: all(self.version(base) not in before for base in self.bases),
            what="the policy reload",
        )
        redis.Redis.from_url(self.redis_url).flushdb()

    @staticmethod
    def version(base: str) -> str:
        return str(httpx.get(base + "/readyz", timeout=5).json()["policy_version"])


@pytest.fixture(scope="module")
def pair(
    simulator: RunningSimulator, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    policy = write_policy(tmp_path_factory.mktemp("budgets"), timeout_s=30)
    env = {
        "DEEPSEEK_API_BASE": simulator.url,
        "DEEPSEEK_API_KEY": UPSTREAM_KEY,
        "REDIS_URL": url,
        "FLASHPRO_POLICY_POLL_SECONDS": "0.2",
        "FLASHPRO_ACCESS_LOG": "false",  # nobody reads their stdout: it must not fill up
    }
    args = ["--policy", str(policy), "--log-level", "warning"]
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        managers = [flashpro_process(args, env, ready_s=180) for _ in range(2)]
        started = [pool.submit(stack.enter_context, manager) for manager in managers]
        yield Pair([future.result().base for future in started], policy, url)
    redis.Redis.from_url(url).flushdb()


async def load(
    bases: list[str], model: str, enough: int = REFUSALS_PER_CLIENT, stream: bool = False
) -> Tally:
    """64 clients at once over both processes, each asking until it has been refused (429) or
    downgraded (an answer from another tier) enough times. A stream's cost is not in its
    headers: streams are counted at 0 here, and judged by the ledger."""
    tally = Tally()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one_client(n: int) -> None:
            refusals, i = 0, 0
            while refusals < enough:
                body = chat_body(f"client {n} question {i}", model, stream=stream)
                i += 1
                url = bases[(n + i) % 2] + "/v1/chat/completions"
                try:
                    response = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    tally.other.append(f"{url}: {exc!r}")
                    return
                if response.status_code == 429:
                    tally.refused += 1
                    refusals += 1
                    await asyncio.sleep(0.05)
                elif response.status_code == 200 and (not stream or _whole(response.text)):
                    tier = response.headers["x-flashpro-tier"]
                    tally.costs.setdefault(tier, []).append(
                        float(response.headers.get("x-flashpro-cost-usd", "0"))
                    )
                    refusals += tier != model
                else:
                    tally.other.append(f"{response.status_code} {response.text[:200]}")
                    return

        await asyncio.gather(*(one_client(n) for n in range(CLIENTS)))
    return tally


def _whole(events: str) -> bool:
    """A stream that ended normally: [DONE] after its last chunk, no error event."""
    return events.rstrip().endswith("data: [DONE]") and '"error"' not in events


def test_two_processes_and_64_clients_stay_within_a_reject_budget(pair: Pair) -> None:
    budget = 0.01
    pair.use({"on_exhausted": "reject", "total": {"usd_per_day": budget}})
    tally = asyncio.run(load(pair.bases, "flash"))
    recorded = day_spend(pair.redis_url)
    print(f"reject budget ${budget}: recorded ${recorded:.6f}, {len(tally.costs['flash'])} answers")
    assert not tally.other, tally.other[:3]
    assert tally.refused >= CLIENTS * REFUSALS_PER_CLIENT
    assert tally.matches(recorded), (recorded, tally.spent())
    assert abs(recorded - budget) <= 0.2 * budget, recorded


def test_two_processes_and_64_clients_downgrade_once_the_budget_is_held(pair: Pair) -> None:
    budget = 0.02
    pair.use(
        {"on_exhausted": "downgrade", "downgrade_to": "flash", "total": {"usd_per_day": budget}}
    )
    tally = asyncio.run(load(pair.bases, "pro", enough=2))
    print(
        f"downgrade budget ${budget}: pro ${tally.spent('pro'):.6f}, flash ${tally.spent('flash'):.6f}"
    )
    assert not tally.other, tally.other[:3]
    assert tally.costs["flash"], "nothing was downgraded"
    assert tally.matches(day_spend(pair.redis_url))
    # Pro served until the budget (Flash answers count toward it too) was held or spent, never
    # the whole 64 in flight past it; past it, Flash served everything
    assert tally.costs["pro"], "Pro never served"
    assert tally.spent("pro") <= 1.2 * budget, tally.spent("pro")


def test_two_processes_and_64_pro_streams_stay_within_a_reject_budget(pair: Pair) -> None:
    budget = 0.05
    pair.use({"on_exhausted": "reject", "total": {"usd_per_day": budget}})
    tally = asyncio.run(load(pair.bases, "pro", stream=True))
    recorded = day_spend(pair.redis_url)
    print(f"reject budget ${budget}, Pro streams: recorded ${recorded:.6f}")
    assert not tally.other, tally.other[:3]
    assert tally.costs["pro"]
    assert abs(recorded - budget) <= 0.2 * budget, recorded
