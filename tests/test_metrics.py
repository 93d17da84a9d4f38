"""Prometheus metrics: counts match the traffic sent, in one process and across two workers."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from router.observe.logs import FLUSH_S
from router.observe.metrics import MULTIPROC_ENV, Metrics, multiprocess_dir
from router.observe.observer import Observer
from router.observe.record import RequestRecord
from router.routing.constrain import Spent
from router.routing.cost import Usage
from router.routing.decision import Decision
from router.routing.limits import BudgetLimit
from router.routing.policy import Observability
from router.simulator.server import RunningSimulator
from tests.conftest import flashpro_process, wait_until
from tests.traffic import Sent, observed_flashpro, send_mix

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    return samples_of(httpx.get(base + "/metrics", timeout=10).text)


def samples_of(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def files(path: Path) -> Samples:
    """What the workers wrote to a PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return samples_of(generate_latest(registry).decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="module")
def observed(
    simulator: RunningSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with observed_flashpro(simulator, tmp_path_factory.mktemp("metrics")) as (base, _):
        yield base


@pytest.fixture(scope="module")
def mix(observed: str, upstream_env: None) -> tuple[Sent, Samples]:
    sent = send_mix(observed)
    return sent, scrape(observed)


def test_request_counts_match_the_traffic_sent(mix: tuple[Sent, Samples]) -> None:
    sent, samples = mix
    assert total(samples, "flashpro_requests_total") == len(sent.responses) == 13
    assert total(samples, "flashpro_requests_total", status="2xx") == sent.count(200) == 11
    assert total(samples, "flashpro_requests_total", error="model_not_found") == 1
    assert total(samples, "flashpro_requests_total", error="invalid_request") == 1
    assert total(samples, "flashpro_requests_total", tier="flash", alias="-", status="2xx") == 6
    assert total(samples, "flashpro_requests_total", tier="pro", rule="pinned:pro") == 3 or (
        total(samples, "flashpro_requests_total", tier="pro", alias="-") == 3
    )
    tiers = sent.headers("x-flashpro-tier")
    for tier in set(tiers):
        assert total(samples, "flashpro_requests_total", tier=tier) == tiers.count(tier)


def test_cache_results_are_counted(mix: tuple[Sent, Samples]) -> None:
    sent, samples = mix
    hits = sent.headers("x-flashpro-cache").count("hit")
    assert hits == 2
    assert total(samples, "flashpro_cache_requests_total", result="hit") == 2
    assert total(samples, "flashpro_cache_requests_total", result="miss") == 4
    assert total(samples, "flashpro_cache_requests_total") == 11


def test_latency_histograms_per_tier(mix: tuple[Sent, Samples]) -> None:
    _, samples = mix
    assert total(samples, "flashpro_upstream_latency_seconds_count", tier="flash") >= 4
    assert total(samples, "flashpro_upstream_latency_seconds_count", tier="pro") >= 3
    assert total(samples, "flashpro_time_to_first_token_seconds_count", tier="pro") == 3
    assert total(samples, "flashpro_time_to_first_token_seconds_count", tier="flash") == 0


def test_tokens_spend_and_savings(mix: tuple[Sent, Samples]) -> None:
    sent, samples = mix
    assert total(samples, "flashpro_tokens_total", tier="flash", kind="prompt") > 0
    assert total(samples, "flashpro_tokens_total", tier="flash", kind="completion") > 0
    assert total(samples, "flashpro_tokens_total", tier="pro", kind="reasoning") > 0
    flash_costs = [
        float(r.headers["x-flashpro-cost-usd"])
        for r in sent.responses
        if r.headers.get("x-flashpro-tier") == "flash"
        and r.headers.get("x-flashpro-cache") != "hit"
    ]
    assert total(samples, "flashpro_spend_usd_total", tier="flash") == pytest.approx(
        sum(flash_costs), rel=1e-6
    )
    spend = total(samples, "flashpro_spend_usd_total")
    baseline = total(samples, "flashpro_baseline_usd_total")
    assert total(samples, "flashpro_spend_usd_total", tier="pro") > 0
    assert baseline > spend > 0
    assert total(samples, "flashpro_savings_usd_total", tier="flash") > 0
    assert total(samples, "flashpro_savings_usd_total") == pytest.approx(baseline - spend, rel=1e-6)


def test_budget_remaining_is_exported(mix: tuple[Sent, Samples]) -> None:
    _, samples = mix
    day = total(samples, "flashpro_budget_remaining_usd", scope="total", period="day")
    assert 0 < day <= 50


def test_labels_carry_no_prompt_or_key(mix: tuple[Sent, Samples]) -> None:
    sent, samples = mix
    values = {value for _, labels in samples for _, value in labels}
    assert not any(prompt in value for prompt in sent.prompts for value in values)
    assert all(len(value) < 64 for value in values)


def test_fallback_and_breaker_api() -> None:
    metrics = Metrics()
    metrics.fallback("pro", "flash", "timeout")
    metrics.fallback("pro", "flash", "timeout")
    metrics.breaker_state("pro", "open")
    metrics.breaker_state("flash", "half_open")
    get = metrics.registry.get_sample_value
    labels = {"from_tier": "pro", "to_tier": "flash", "reason": "timeout"}
    assert get("flashpro_fallbacks_total", labels) == 2
    assert get("flashpro_circuit_breaker_state", {"tier": "pro"}) == 2
    assert get("flashpro_circuit_breaker_state", {"tier": "flash"}) == 1
    metrics.breaker_state("pro", "closed")
    assert get("flashpro_circuit_breaker_state", {"tier": "pro"}) == 0


def test_tenant_label_only_when_the_policy_allows() -> None:
    from router.routing.policy import Observability

    decision = Decision("auto", "flash", "deepseek/x", "disabled", None, 0.1, "threshold", "r")
    metrics = Metrics()
    metrics.request_done(RequestRecord("a", 200, decision, group="research"))
    opted = Observability(tenant_labels=True)
    metrics.request_done(RequestRecord("b", 200, decision, options=opted, group="research"))
    get = metrics.registry.get_sample_value
    base = {
        "api": "chat",
        "alias": "auto",
        "tier": "flash",
        "rule": "threshold",
        "status": "2xx",
        "error": "",
    }
    assert get("flashpro_requests_total", {**base, "tenant": ""}) == 1
    assert get("flashpro_requests_total", {**base, "tenant": "research"}) == 1


def test_key_budgets_are_not_labelled() -> None:
    metrics = Metrics()
    limit = BudgetLimit(usd_per_day=10)
    metrics.budget_remaining([Spent("key:abc", limit, 4.0), Spent("group:ops", limit, 12.0)])
    get = metrics.registry.get_sample_value
    assert get("flashpro_budget_remaining_usd", {"scope": "group:ops", "period": "day"}) == 0
    assert get("flashpro_budget_remaining_usd", {"scope": "key:abc", "period": "day"}) is None


def test_two_workers_report_every_request(tmp_path: Path) -> None:
    env = {
        "DEEPSEEK_API_KEY": "",
        "FLASHPRO_ACCESS_LOG": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    args = ["--simulate", "--simulate-speed", "0.01", "--workers", "2"]

    def ask(client: httpx.Client, i: int) -> int:
        body = {"model": "flash", "messages": [{"role": "user", "content": f"hi {i}"}]}
        return client.post("/v1/chat/completions", json=body).status_code

    with flashpro_process(args, env, ready_path="/readyz") as running:
        wait_until(lambda: len(list(tmp_path.glob("gauge_min_*.db"))) == 2, what="both workers")
        # concurrent connections, so the kernel hands them to both workers
        with (
            httpx.Client(base_url=running.base, timeout=30) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            assert list(pool.map(lambda i: ask(client, i), range(24))) == [200] * 24
            # each worker writes its counts to its file every FLUSH_S
            wait_until(
                lambda: total(scrape(running.base), "flashpro_requests_total") == 24,
                timeout_s=10,
                what="both workers' counts",
            )
            scrapes = [scrape(running.base) for _ in range(4)]
            assert list(pool.map(lambda i: ask(client, i), range(6))) == [200] * 6
    workers = {path.stem.rsplit("_", 1)[-1] for path in tmp_path.glob("counter_*.db")}
    assert len(workers) == 2  # both workers answered requests ...
    for samples in scrapes:  # ... and whichever answers the scrape reports all of them
        assert total(samples, "flashpro_requests_total", tier="flash") == 24
        assert total(samples, "flashpro_upstream_latency_seconds_count", tier="flash") == 24
    left = files(tmp_path)  # the last requests, written when the workers stopped
    assert total(left, "flashpro_requests_total", tier="flash") == 30
    assert total(left, "flashpro_upstream_latency_seconds_count", tier="flash") == 30


def test_streams_cut_short_are_counted(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    def stream_body(text: str) -> dict[str, object]:
        messages = [{"role": "user", "content": f"{text} {tmp_path.name}"}]
        return {"model": "pro", "messages": messages, "stream": True}

    with observed_flashpro(simulator, tmp_path) as (base, _):
        url = base + "/v1/chat/completions"
        dropped = httpx.post(url, json=stream_body("Drop me [[sim:disconnect_after=3]]"))
        assert dropped.status_code == 200 and "error" in dropped.text
        with httpx.stream("POST", url, json=stream_body("Long story [[sim:slow=4]]")) as response:
            next(response.iter_lines())  # one event, then hang up

        def counted() -> bool:
            samples = scrape(base)
            left = total(samples, "flashpro_requests_total", error="client_disconnected")
            broke = total(samples, "flashpro_requests_total", error="upstream_interrupted")
            return (left, broke) == (1, 1)

        wait_until(counted, timeout_s=10, what="both cut streams counted")
        samples = scrape(base)
        assert total(samples, "flashpro_requests_total") == 2
        assert total(samples, "flashpro_requests_total", status="4xx") == 1
        assert total(samples, "flashpro_requests_total", status="5xx") == 1
        assert total(samples, "flashpro_spend_usd_total") > 0  # what the cut streams streamed


def test_several_workers_get_a_shared_metrics_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with multiprocess_dir(1):
        assert MULTIPROC_ENV not in os.environ
    with multiprocess_dir(2):
        path = Path(os.environ[MULTIPROC_ENV])
        assert path.is_dir() and not any(path.iterdir())
    assert MULTIPROC_ENV not in os.environ and not path.exists()
    monkeypatch.setenv(MULTIPROC_ENV, "/operator/chosen")
    with multiprocess_dir(4):
        assert os.environ[MULTIPROC_ENV] == "/operator/chosen"


def test_breaker_states_are_read_at_scrape_time(observed: str, mix: tuple[Sent, Samples]) -> None:
    samples = scrape(observed)
    for tier in ("flash", "pro", "pro-max"):
        assert total(samples, "flashpro_circuit_breaker_state", tier=tier) == 0  # closed


def traffic(count: int, seed: int = 7) -> list[RequestRecord]:
    """Records of every kind: each tier and outcome, hits and misses, streams, and upstream
    times exactly on a bucket bound and past the last one."""
    rng = random.Random(seed)
    bounds = [50.0, 1000.0, 300_000.0, 400_000.0]  # ms
    records = []
    for i in range(count):
        tier = rng.choice(["flash", "pro", "pro-max"])
        alias = rng.choice(["auto", None])
        decision = Decision(alias, tier, "m", "disabled", None, rng.random(), "threshold", "r")
        status = 200 if i < 5 else rng.choice([200, 200, 200, 200, 404, 499, 500])
        cache = "miss" if i < 5 else rng.choice(["hit", "miss", "bypass"])
        upstream = None if cache == "hit" else rng.uniform(1, 9000)
        if 0 < i < 5:
            upstream = bounds[i - 1]
        records.append(
            RequestRecord(
                f"r{i}",
                status,
                decision if i % 20 else None,
                options=Observability(tenant_labels=i % 3 == 0),
                error=None if status < 400 else "upstream_error",
                cache=cache,
                group=rng.choice([None, "research"]),
                usage=Usage(rng.randint(0, 900), rng.randint(0, 400), rng.choice([0, 64]), 8),
                cost_usd=rng.choice([0.0, rng.random() / 100]),
                baseline_usd=rng.choice([0.0, rng.random() / 50]),
                upstream_ms=upstream,
                ttft_ms=upstream / 4 if upstream is not None and i % 4 == 0 else None,
            )
        )
    return records


def comparable(metrics: Metrics) -> str:
    """The exposition text without what depends on the clock."""
    text = metrics.render()[0].decode()
    return re.sub(
        r"^(flashpro_\w+_created\S*|flashpro_start_time_seconds) .*$", r"\1", text, flags=re.M
    )


def test_request_metrics_read_exactly_as_prometheus_client_counts_them() -> None:
    ours, reference = Metrics(), Metrics(multiprocess=True)  # the latter writes to client metrics
    for record in traffic(400):
        ours.request_done(record)
        reference.request_done(record)
    reference.flush()
    assert comparable(ours) == comparable(reference)
    samples = samples_of(ours.render()[0].decode())
    bucket = "flashpro_upstream_latency_seconds_bucket"
    assert total(samples, bucket, le="0.05") >= 1  # an observation on a bound is counted in it
    assert total(samples, bucket, le="+Inf") > total(samples, bucket, le="300.0")
    assert total(samples, "flashpro_time_to_first_token_seconds_count") > 0


def test_request_metrics_are_current_at_scrape_time() -> None:
    metrics = Metrics()
    get = metrics.registry.get_sample_value
    record = traffic(2)[1]
    assert record.decision is not None and record.upstream_ms is not None
    labels = {"tier": record.decision.tier}
    metrics.request_done(record)
    assert get("flashpro_upstream_latency_seconds_count", labels) == 1
    metrics.request_done(record)
    assert get("flashpro_upstream_latency_seconds_count", labels) == 2
    assert b"flashpro_requests_total{" in metrics.render()[0]


def test_worker_metrics_reach_the_shared_counts_when_flushed() -> None:
    metrics = Metrics(multiprocess=True)
    get = metrics.registry.get_sample_value
    record = traffic(2)[1]
    assert record.decision is not None and record.upstream_ms is not None
    labels = {"tier": record.decision.tier}
    metrics.request_done(record)
    assert get("flashpro_upstream_latency_seconds_count", labels) is None
    metrics.flush()
    assert get("flashpro_upstream_latency_seconds_count", labels) == 1
    assert get("flashpro_cache_requests_total", {**labels, "result": record.cache}) == 1
    metrics.flush()  # nothing new: nothing added twice
    assert get("flashpro_upstream_latency_seconds_count", labels) == 1
    assert get("flashpro_cache_requests_total", {**labels, "result": record.cache}) == 1


async def test_the_observer_flushes_worker_metrics_while_serving_and_at_exit() -> None:
    observer = Observer(metrics=Metrics(multiprocess=True))
    get = observer.metrics.registry.get_sample_value
    record = traffic(2)[1]
    assert record.decision is not None and record.upstream_ms is not None
    labels = {"tier": record.decision.tier}
    async with observer.running():
        observer.request_done(record)
        await asyncio.sleep(FLUSH_S * 2.5)
        assert get("flashpro_upstream_latency_seconds_count", labels) == 1
        observer.request_done(record)
    assert get("flashpro_upstream_latency_seconds_count", labels) == 2
