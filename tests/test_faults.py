"""Fault injection with the simulator and a real Redis: upstream 429s, 500s, timeouts, slow and
dropped streams, Redis stopped and restarted, a flashpro process killed while another serves,
and a graceful SIGTERM. Every request must be answered or fail with a proper error, and the
spend ledger must equal what the answered requests were charged."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.soak import Outcome, chat_body, send
from router.app import build_deps
from router.pipeline import Deps
from router.routing.policy import Policy, load_policy
from router.simulator.server import RunningSimulator
from tests.conftest import (
    UPSTREAM_KEY,
    FlashproProcess,
    RedisServer,
    flashpro_process,
    serve_app,
    settings_for,
)
from tests.fault_policy import write_policy

BUDGETS = {"total": {"usd_per_day": 1000}}  # a budget scope, so every answer is in the ledger


def db_url(server: RedisServer, db: int) -> str:
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def ledger_total(url: str) -> float:
    day = datetime.now(UTC).strftime("%Y%m%d")
    client = redis.Redis.from_url(url)
    # spend is kept per upstream set: flashpro:v1:spend:<upstreams>:total:d:<day>
    keys = client.keys(f"flashpro:v1:spend:*:total:d:{day}")
    assert len(keys) <= 1, keys
    return float(client.get(keys[0]) or 0) if keys else 0.0


def run_all(base: str, bodies: list[dict[str, Any]], policy: Policy) -> list[Outcome]:
    with httpx.Client(timeout=20) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda body: send(client, base, body, policy), bodies))


def assert_nothing_lost(outcomes: list[Outcome]) -> None:
    lost = [o for o in outcomes if o.verdict == "lost"]
    assert not lost, lost


def charged(outcomes: list[Outcome]) -> Any:
    """The spend the answered requests were charged (cost headers keep 8 decimals)."""
    answered = [o.cost_usd for o in outcomes if o.verdict == "answered"]
    return pytest.approx(sum(answered), rel=1e-6, abs=1e-8 * (len(answered) + 1))


def spend_reported(base: str) -> float:
    """flashpro_spend_usd over every tier, from /metrics."""
    text = httpx.get(base + "/metrics", timeout=10).text
    lines = [line for line in text.split("\n") if line.startswith("flashpro_spend_usd_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def faulty(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[str, Deps, str, Policy]]:
    url = db_url(redis_server, 7)
    path = write_policy(tmp_path, timeout_s=0.5, budgets=BUDGETS)
    settings = settings_for(simulator, policy=path, redis_url=url)
    deps = build_deps(settings)
    with serve_app(settings, deps) as base:
        yield base, deps, url, load_policy(path)[0]
    httpx.delete(simulator.url + "/_sim/faults")


def mixed_bodies(run: str) -> list[dict[str, Any]]:
    """Plain and streamed requests, some repeatable (cached), with every kind of fault."""
    bodies: list[dict[str, Any]] = []
    for i in range(4):
        for stream in (False, True):
            bodies += [
                chat_body(f"plain {run} {i}", stream=stream),
                chat_body(f"cached {run} {i % 2}", stream=stream, temperature=0),
                chat_body(f"pro {run} {i}", "pro", stream=stream),
                chat_body(f"limited {run} {i} [[sim:status=429]]", stream=stream),
                chat_body(f"broken {run} {i} [[sim:status=500]]", "pro-max", stream=stream),
                # ten times the tier timeout: a loaded machine cannot close the gap
                chat_body(f"late {run} {i} [[sim:delay_ms=5000]]", stream=stream),
                chat_body(f"slow {run} {i} [[sim:slow=5]]", stream=stream),
            ]
        bodies.append(chat_body(f"dropped {run} {i} [[sim:disconnect_after=3]]", stream=True))
    return bodies


def content_of(outcome: Outcome) -> str:
    """The answer's text, from a whole body or from streamed chunks."""
    if isinstance(outcome.body, dict):
        return str(outcome.body["choices"][0]["message"]["content"])
    deltas = [c["delta"].get("content") or "" for chunk in outcome.body for c in chunk["choices"]]
    return "".join(deltas)


def test_upstream_faults_lose_nothing_and_the_ledger_matches(
    faulty: tuple[str, Deps, str, Policy], sim: RunningSimulator
) -> None:
    base, _, url, policy = faulty
    # transient faults on top of the markers: these are cured by a retry or a fallback
    httpx.post(sim.url + "/_sim/faults", json={"count": 3, "status": 429, "retry_after": 0.01})
    httpx.post(sim.url + "/_sim/faults", json={"count": 2, "status": 503})
    bodies = mixed_bodies(tag())
    outcomes = run_all(base, bodies, policy)
    assert_nothing_lost(outcomes)
    for body, outcome in zip(bodies, outcomes, strict=True):
        text = body["messages"][0]["content"]
        faulty_prompt = "[[sim:" in text and "sim:slow" not in text
        assert outcome.verdict == ("failed" if faulty_prompt else "answered"), (body, outcome)
        if outcome.verdict == "failed":  # 200: an error event ended a stream that had begun
            assert outcome.status in {200, 429, 502, 504}, outcome
    answered = [o for o in outcomes if o.verdict == "answered"]
    # the ledger holds what the answers were charged, plus what the streams dropped mid-way
    # streamed before they broke (estimated; the spend metric counts both)
    dropped = [b for b in bodies if "disconnect_after" in b["messages"][0]["content"]]
    assert dropped and ledger_total(url) > sum(o.cost_usd for o in answered) + 1e-8
    assert ledger_total(url) == pytest.approx(spend_reported(base), rel=1e-9)
    # the cache stayed consistent: one repeatable prompt, one answer, cached or not
    by_prompt: dict[str, set[str]] = {}
    for body, outcome in zip(bodies, outcomes, strict=True):
        if body.get("temperature") == 0:
            text = body["messages"][0]["content"]
            by_prompt.setdefault(text, set()).add(content_of(outcome))
    assert by_prompt and all(len(answers) == 1 for answers in by_prompt.values()), by_prompt
    assert httpx.get(base + "/healthz").status_code == 200


def test_redis_stopped_and_restarted_mid_run(
    faulty: tuple[str, Deps, str, Policy], redis_server: RedisServer
) -> None:
    base, _, url, policy = faulty
    run = tag()
    before = run_all(base, [chat_body(f"before {run} {i}") for i in range(6)], policy)
    cached = chat_body(f"cached {run}", temperature=0)
    first = run_all(base, [cached], policy)[0]
    redis_server.stop()
    try:
        during = run_all(
            base, [chat_body(f"during {run} {i}", stream=i % 2 == 1) for i in range(8)], policy
        )
        during += run_all(base, [cached], policy)
    finally:
        redis_server.start()
    after = run_all(
        base, [chat_body(f"after {run} {i}", stream=i % 2 == 1) for i in range(6)], policy
    )
    after += run_all(base, [cached], policy)
    cached_after = after[-1]
    time.sleep(1.2)  # past the breaker's cool-down: the next request finds Redis back
    after += run_all(base, [chat_body(f"reconciles {run}")], policy)
    for outcomes in (before, during, after):
        assert_nothing_lost(outcomes)
        assert all(o.verdict == "answered" for o in outcomes), outcomes
    # Redis (restarted empty: the test server does not persist) holds the spend made after
    # the outage and, reconciled when it came back, the spend made during it
    assert ledger_total(url) == charged(during + after)
    # one prompt, one answer, whether it came from the cache or not
    answers = {content_of(o) for o in (first, during[-1], cached_after)}
    assert len(answers) == 1


def process_env(sim: RunningSimulator, url: str, **extra: str) -> dict[str, str]:
    return {
        "DEEPSEEK_API_BASE": sim.url,
        "DEEPSEEK_API_KEY": UPSTREAM_KEY,
        "REDIS_URL": url,
        "FLASHPRO_POLICY_POLL_SECONDS": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def pair(
    simulator: RunningSimulator, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FlashproProcess, FlashproProcess, str, Policy]]:
    """Two `flashpro serve` processes on one Redis, started side by side (each takes seconds)."""
    url = db_url(redis_server, 8)
    path = write_policy(tmp_path_factory.mktemp("pair"), timeout_s=30, budgets=BUDGETS)
    env = process_env(simulator, url, FLASHPRO_SHUTDOWN_GRACE_S="15")
    managers = [flashpro_process(["--policy", str(path)], env) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(manager.__enter__) for manager in managers]
    try:
        one, two = (future.result() for future in started)
        yield one, two, url, load_policy(path)[0]
    finally:
        for manager, future in zip(managers, started, strict=True):
            if future.exception() is None:
                manager.__exit__(None, None, None)


def test_a_killed_process_loses_only_its_own_connections(
    pair: tuple[FlashproProcess, FlashproProcess, str, Policy],
) -> None:
    one, two, url, policy = pair
    redis.Redis.from_url(url).flushdb()
    run = tag()
    cached = chat_body(f"shared {run}", temperature=0)
    outcomes = run_all(one.base, [chat_body(f"one {run} {i}") for i in range(5)], policy)
    outcomes += run_all(two.base, [chat_body(f"two {run} {i}") for i in range(5)], policy)
    outcomes += run_all(one.base, [cached], policy)
    # a slow stream is in flight on `one` when it is killed
    slow = chat_body(f"killed {run} [[sim:slow=100]]", stream=True)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(run_all, one.base, [slow], policy)
        time.sleep(0.3)
        one.process.send_signal(signal.SIGKILL)
        one.process.wait(timeout=5)
        killed = in_flight.result(timeout=10)[0]
    assert killed.verdict == "lost" and "Error" in killed.why  # the client sees the break
    survivors = run_all(
        two.base, [chat_body(f"after {run} {i}", stream=i % 2 == 1) for i in range(6)], policy
    )
    hit = run_all(two.base, [cached], policy)[0]
    for outcome in [*outcomes, *survivors, hit]:
        assert outcome.verdict == "answered", outcome
    # the cache `one` filled serves `two`, and the ledger holds exactly the answered spend
    assert hit.cost_usd == 0 and hit.body["choices"] == outcomes[-1].body["choices"]
    assert hit.body["id"] != outcomes[-1].body["id"]  # a hit is a new completion
    assert ledger_total(url) == charged([*outcomes, *survivors])


def test_sigterm_finishes_the_stream_in_flight_then_exits(
    pair: tuple[FlashproProcess, FlashproProcess, str, Policy],
) -> None:
    _, served, _, _ = pair
    # about 60 tokens at ~30 ms each: the stream runs for a second or two
    slow = chat_body(f"graceful {tag()} [[sim:slow=300]]", stream=True, max_tokens=60)
    first = threading.Event()
    lines: list[str] = []

    def stream() -> None:
        url = served.base + "/v1/chat/completions"
        with httpx.stream("POST", url, json=slow, timeout=30) as response:
            for line in response.iter_lines():
                lines.append(line)
                first.set()
            lines.append(f"status {response.status_code}")

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert first.wait(10), "the stream did not start"
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    refused = False
    while time.monotonic() < started + 3 and not refused:
        try:
            httpx.get(served.base + "/healthz", timeout=0.5)
        except (httpx.ConnectError, httpx.RemoteProtocolError):
            # refused, or taken from the listen backlog as the socket closed and dropped unserved
            refused = True
        time.sleep(0.05)
    assert refused, "flashpro still accepted connections after SIGTERM"
    assert streaming.is_alive(), "the stream ended before the shutdown began; make it slower"
    streaming.join(timeout=20)
    assert lines[-1] == "status 200"
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"error"' not in events[-2]
    assert served.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 15
