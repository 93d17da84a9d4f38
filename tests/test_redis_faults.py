"""Redis stopped (SIGSTOP: a hung server) and killed during load, with budgets, rate limits and
the share window on: every request is answered, the hang adds about nothing to the typical
request, and the spend made meanwhile is in the ledger once Redis is back. Each run reports
sent / answered / proper error / lost."""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from bench.soak import Outcome, chat_body, send
from router.app import build_deps
from router.routing.policy import Policy, load_policy
from router.simulator.server import RunningSimulator
from tests.conftest import (
    RedisServer,
    own_redis_server,
    serve_app,
    settings_for,
    wait_until,
)
from tests.fault_policy import write_policy

WORKERS = 8
SECTIONS = {
    "budgets": {"on_exhausted": "reject", "total": {"usd_per_day": 1000}},
    "limits": {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000},
    "share_cap": {"tier": "pro", "max_share": 0.5, "window_s": 60},
}


@dataclass
class Run:
    """Requests sent in phases by `WORKERS` threads: outcome and latency of each, by phase."""

    phase: str = "before"
    seen: dict[str, list[tuple[Outcome, float]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def outcomes(self, *phases: str) -> list[Outcome]:
        return [o for p in phases for o, _ in self.seen.get(p, [])]

    def median_s(self, phase: str) -> float:
        return statistics.median(s for _, s in self.seen[phase])

    def report(self, what: str) -> str:
        every = self.outcomes(*self.seen)
        counts = {v: sum(o.verdict == v for o in every) for v in ("answered", "failed", "lost")}
        medians = ", ".join(f"{p} {self.median_s(p) * 1000:.0f} ms" for p in self.seen)
        return (
            f"{what}: sent {len(every)}, answered {counts['answered']}, proper error "
            f"{counts['failed']}, lost {counts['lost']}; median latency {medians}"
        )


def load(base: str, policy: Policy, run: Run) -> None:
    """Whole and streamed Flash requests back to back until `run.stop`."""
    with httpx.Client(timeout=20) as client:
        i = 0
        while not run.stop.is_set():
            phase = run.phase
            body = chat_body(f"{phase} {threading.get_ident()} {i}", stream=i % 3 == 2)
            started = time.monotonic()
            outcome = send(client, base, body, policy)
            run.seen.setdefault(phase, []).append((outcome, time.monotonic() - started))
            i += 1


def charged(outcomes: list[Outcome]) -> float:
    return sum(o.cost_usd for o in outcomes if o.verdict == "answered")


def rounding(outcomes: list[Outcome]) -> float:
    """How far the cost headers' 8 decimals may sum from the ledger."""
    return 1e-8 * (len(outcomes) + 1)


def ledger_total(url: str) -> float:
    day = datetime.now(UTC).strftime("%Y%m%d")
    client = redis.Redis.from_url(url)
    keys = client.keys(f"flashpro:v1:spend:*total:d:{day}")
    return sum(float(client.get(key) or 0) for key in keys)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and kill."""
    with own_redis_server() as server:
        yield server


@pytest.fixture
def served(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path, own_redis: RedisServer
) -> Iterator[tuple[str, Policy]]:
    path = write_policy(tmp_path, timeout_s=10, **SECTIONS)
    settings = settings_for(simulator, policy=path, redis_url=own_redis.url)
    with serve_app(settings, build_deps(settings)) as base:
        yield base, load_policy(path)[0]


Step = tuple[Callable[[], None], str, float]  # change Redis, then load as this phase so long


def phases(base: str, policy: Policy, run: Run, steps: list[Step]) -> None:
    """Load from `WORKERS` threads through the steps."""
    with ThreadPoolExecutor(WORKERS) as pool:
        workers = [pool.submit(load, base, policy, run) for _ in range(WORKERS)]
        try:
            for change, name, seconds in steps:
                change()
                run.phase = name
                time.sleep(seconds)
        finally:
            run.stop.set()
            for worker in workers:
                worker.result()


def nothing() -> None:
    return None


def test_a_hung_redis_adds_no_latency_to_the_typical_request_and_loses_no_spend(
    served: tuple[str, Policy], own_redis: RedisServer
) -> None:
    base, policy = served
    run = Run()
    process = own_redis.process
    assert process is not None
    try:
        phases(
            base,
            policy,
            run,
            [
                (nothing, "before", 1.5),
                (lambda: process.send_signal(signal.SIGSTOP), "hung", 3.0),
                (lambda: process.send_signal(signal.SIGCONT), "after", 2.5),
            ],
        )
    finally:
        process.send_signal(signal.SIGCONT)
    print(run.report("redis SIGSTOP"))
    every = run.outcomes("before", "hung", "after")
    assert all(o.verdict == "answered" for o in every), [
        o for o in every if o.verdict != "answered"
    ]
    # without a breaker every request waited on each Redis call (about 1.5 s); now one probe a
    # second does, and the typical request does not notice
    assert run.median_s("hung") <= run.median_s("before") + 0.1
    expected, slack = charged(every), rounding(every)
    wait_until(lambda: ledger_total(own_redis.url) >= expected - slack, 10, "reconciliation")
    assert abs(ledger_total(own_redis.url) - expected) <= slack, (
        ledger_total(own_redis.url),
        expected,
    )


def test_a_killed_redis_loses_no_request_and_its_replacement_gets_the_spend(
    served: tuple[str, Policy], own_redis: RedisServer
) -> None:
    base, policy = served
    run = Run()

    def kill() -> None:
        assert own_redis.process is not None
        own_redis.process.kill()
        own_redis.process.wait()
        own_redis.process = None

    # the replacement starts empty: the test server does not persist
    phases(
        base,
        policy,
        run,
        [(nothing, "before", 1.0), (kill, "down", 2.5), (own_redis.start, "after", 3.0)],
    )
    print(run.report("redis killed"))
    every = run.outcomes("before", "down", "after")
    assert all(o.verdict == "answered" for o in every), [
        o for o in every if o.verdict != "answered"
    ]
    assert run.median_s("down") <= run.median_s("before") + 0.1
    # what the old server held is gone with it; what was spent while it was down, and since,
    # is in the new one (requests in flight when it died are in either)
    spent_since, slack = charged(run.outcomes("down", "after")), rounding(every)
    wait_until(lambda: ledger_total(own_redis.url) >= spent_since - slack, 10, "reconciliation")
    assert spent_since - slack <= ledger_total(own_redis.url) <= charged(every) + slack
