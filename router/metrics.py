"""Prometheus metrics: what requests the router served, how, how fast and at what cost. Counts in
memory (or in prometheus-client's per-process files under PROMETHEUS_MULTIPROC_DIR, which
`flashpro serve --workers N` sets so every worker's counts add up on /metrics).

Labels are low-cardinality by construction: alias, tier and rule names come from the policy;
no prompt, key or request id is ever a label, and the tenant label is a group name only when
the policy's `observability.tenant_labels` says so (otherwise it is empty).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from router.constrain import Spent
    from router.observe import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}
TOKEN_KINDS = ("prompt", "cached_prompt", "completion", "reasoning")


@contextmanager
def multiprocess_dir(workers: int) -> Iterator[None]:
    """With several workers, point prometheus-client at a fresh directory for their files
    (inherited by the workers; removed at exit). An operator's own directory is kept."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="flashpro-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """flashpro's metrics in their own registry (several apps may live in one test process).

    Besides `request_done`, the resilience code reports through `fallback()` and
    `breaker_state()`, and the controls through `budget_remaining()`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "flashpro_requests",
            "Chat requests by alias, tier, rule and outcome.",
            ["alias", "tier", "rule", "status", "error", "tenant"],
            registry=r,
        )
        self.cache = Counter(
            "flashpro_cache_requests",
            "Chat requests by response-cache result (hit, miss, bypass).",
            ["tier", "result"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "flashpro_upstream_latency_seconds",
            "Upstream call duration, to the last token.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flashpro_time_to_first_token_seconds",
            "Streams: time from the upstream call to its first chunk.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "flashpro_tokens",
            "Tokens the upstream reported: prompt, cached_prompt, completion (reasoning "
            "included) and reasoning.",
            ["tier", "kind"],
            registry=r,
        )
        self.spend = Counter(
            "flashpro_spend_usd", "Spend in USD, priced from the policy.", ["tier"], registry=r
        )
        self.baseline = Counter(
            "flashpro_baseline_usd",
            "What the same usage would have cost on the savings baseline tier (all-Pro).",
            ["tier"],
            registry=r,
        )
        self.savings = Counter(
            "flashpro_savings_usd",
            "Estimated savings against the baseline tier (baseline minus spend; cache hits "
            "save their whole baseline cost).",
            ["tier"],
            registry=r,
        )
        self.fallbacks = Counter(
            "flashpro_fallbacks",
            "Requests moved from one tier to another by the resilience code.",
            ["from_tier", "to_tier", "reason"],
            registry=r,
        )
        self.breaker = Gauge(
            "flashpro_circuit_breaker_state",
            "Circuit breaker per tier: 0 closed, 1 half-open, 2 open.",
            ["tier"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.budget = Gauge(
            "flashpro_budget_remaining_usd",
            "USD left in each budget (total and group scopes; keys are not labelled).",
            ["scope", "period"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

        self.started = Gauge(
            "flashpro_start_time_seconds",
            "When a flashpro worker started, unix time (the earliest of the workers).",
            multiprocess_mode="min",
            registry=r,
        )
        self.started.set(time.time())
        self._children: dict[tuple[object, ...], Any] = {}  # label lookups cost more than an inc

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, record: RequestRecord) -> None:
        decision = record.decision
        alias = (decision.alias or "-") if decision else "-"
        tier = decision.tier if decision else "-"
        rule = decision.rule if decision else "-"
        tenant = (record.group or "") if record.options.tenant_labels else ""
        status = status_class(record.status)
        self._child(self.requests, alias, tier, rule, status, record.error or "", tenant).inc()
        if decision is None:
            return
        if record.cost_usd > 0:  # a stream cut short is charged what it streamed
            self._child(self.spend, tier).inc(record.cost_usd)
        if record.status >= 400:
            return
        self._child(self.cache, tier, record.cache).inc()
        if record.upstream_ms is not None:
            self._child(self.upstream_latency, tier).observe(record.upstream_ms / 1000)
        if record.ttft_ms is not None:
            self._child(self.ttft, tier).observe(record.ttft_ms / 1000)
        usage = record.usage
        if record.cache != "hit":
            for kind, count in zip(
                TOKEN_KINDS,
                (
                    usage.prompt_tokens,
                    usage.cache_hit_tokens,
                    usage.completion_tokens,
                    usage.reasoning_tokens,
                ),
                strict=True,
            ):
                if count:
                    self._child(self.tokens, tier, kind).inc(count)
        if record.baseline_usd > 0:
            self._child(self.baseline, tier).inc(record.baseline_usd)
        if record.savings_usd > 0:  # a counter only grows; Pro-Max can cost more than Pro
            self._child(self.savings, tier).inc(record.savings_usd)

    def fallback(self, from_tier: str, to_tier: str, reason: str) -> None:
        """A request moved to another tier (reason: a short fixed word, e.g. timeout, 5xx)."""
        self.fallbacks.labels(from_tier, to_tier, reason).inc()

    def breaker_state(self, tier: str, state: str) -> None:
        """A tier's circuit breaker changed state: closed, half_open or open."""
        self.breaker.labels(tier).set(BREAKER_STATES[state])

    def budget_remaining(self, spent: Sequence[Spent]) -> None:
        """USD left per budget scope, from the spend a request was admitted under."""
        for item in spent:
            if item.scope.startswith("key:"):
                continue  # one series per client key would be unbounded
            for period, limit, used in (
                ("day", item.limit.usd_per_day, item.day_usd),
                ("month", item.limit.usd_per_month, item.month_usd),
            ):
                if limit is not None:
                    self.budget.labels(item.scope, period).set(max(limit - used, 0.0))

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this registry, or every worker's files in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
