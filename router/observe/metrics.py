"""Prometheus metrics: what requests the router served, how, how fast and at what cost. Counts in
memory, the per-request ones as plain numbers read at scrape time (or written every FLUSH_S to
prometheus-client's per-process files under PROMETHEUS_MULTIPROC_DIR, which
`flashpro serve --workers N` sets so every worker's counts add up on /metrics).

Labels are low-cardinality by construction: alias, tier and rule names come from the policy;
no prompt, key or request id is ever a label, and the tenant label is a group name only when
the policy's `observability.tenant_labels` says so (otherwise it is empty).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from router.observe.record import RequestRecord
from router.routing.constrain import Spent

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}

Labels = tuple[str, ...]


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


def created_series() -> bool:
    """Whether series carry a `_created` sample (prometheus-client's own switch)."""
    flag = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "false")
    return flag.lower() not in ("true", "1", "t")


class _Counter:
    """A counter family as plain floats keyed by label values, in the order its series first
    appeared: what a prometheus-client `Counter` exposes, for one dict update per increment.

    Bound to a prometheus-client `Counter` (multiprocess mode), it keeps the increments since
    the last `flush` and `flush` adds them to that counter's file."""

    __slots__ = ("created", "documentation", "files", "labelnames", "name", "values")

    def __init__(self, name: str, documentation: str, labelnames: Labels) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[Labels, float] = {}
        self.created: dict[Labels, float] = {}
        self.files: Counter | None = None

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        value = self.values.get(labels)
        if value is None:
            self.created[labels] = time.time()
            value = 0.0
        self.values[labels] = value + amount

    def family(self, created: bool) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value, self.created[labels] if created else None)
        return family

    def bind(self, registry: CollectorRegistry) -> None:
        self.files = Counter(self.name, self.documentation, self.labelnames, registry=registry)

    def flush(self) -> None:
        if self.files is None:
            return
        values, self.values = self.values, {}
        self.created.clear()
        for labels, amount in values.items():
            self.files.labels(*labels).inc(amount)


class _Buckets:
    __slots__ = ("counts", "created", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0
        self.created = time.time()


class _Histogram:
    """A histogram family as plain numbers (per series: a count per bucket and the sum), in the
    order its series first appeared: what a prometheus-client `Histogram` exposes.

    Bound to a prometheus-client `Histogram` (multiprocess mode), it keeps the observations
    themselves until `flush` replays them: prometheus-client adds any amount to a counter, but
    takes a histogram's one observation at a time."""

    __slots__ = (
        "bounds",
        "documentation",
        "files",
        "labelnames",
        "les",
        "name",
        "pending",
        "series",
    )

    def __init__(
        self, name: str, documentation: str, labelnames: Labels, buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = (*buckets, math.inf)
        self.les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.series: dict[Labels, _Buckets] = {}
        self.pending: list[tuple[Labels, float]] | None = None
        self.files: Histogram | None = None

    def observe(self, labels: Labels, amount: float) -> None:
        if self.pending is not None:
            self.pending.append((labels, amount))
            return
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Buckets(len(self.bounds))
        series.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount
        series.sum += amount

    def family(self, created: bool) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in self.series.items():
            buckets, total = [], 0.0
            for le, count in zip(self.les, series.counts, strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(labels, buckets, series.sum)
            if created:
                named = dict(zip(self.labelnames, labels, strict=True))
                family.add_sample(self.name + "_created", named, series.created)
        return family

    def bind(self, registry: CollectorRegistry) -> None:
        self.files = Histogram(
            self.name, self.documentation, self.labelnames, buckets=self.bounds, registry=registry
        )
        self.pending = []

    def flush(self) -> None:
        if self.files is None or not self.pending:
            return
        pending, self.pending = self.pending, []
        for labels, amount in pending:
            self.files.labels(*labels).observe(amount)


class _Collected:
    """The plain-number families, read at scrape time (a prometheus-client collector)."""

    def __init__(self, families: Sequence[_Counter | _Histogram]) -> None:
        self.families = families
        self.created = created_series()

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family(self.created)


def rule_label(rule: str) -> str:
    """The `rule` label: a threshold's tier without its value (`threshold:pro>=0.61` ->
    `threshold:pro`), so a share or threshold change makes no new series."""
    return rule.split(">=", 1)[0]


class Metrics:
    """flashpro's metrics in their own registry (several apps may live in one test process).

    The per-request families are plain numbers that `request_done` updates without a lock or a
    file write (requests finish, and /metrics is rendered, on the event loop's thread). In one
    process the registry reads them at scrape time; in multiprocess mode `flush` writes them to
    this worker's files, which the observer does every FLUSH_S (router/observe/logs.py) and at exit, and
    `render` before it reads the files.

    Besides `request_done`, the resilience code reports through `fallback()` and
    `breaker_state()`, the upstream calls through `account_error()`, `tier_saturated()` and
    `upstream_in_flight()`, and the controls through `budget_remaining()`.
    """

    def __init__(self, multiprocess: bool | None = None) -> None:
        """`multiprocess` None: as PROMETHEUS_MULTIPROC_DIR says."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = _Counter(
            "flashpro_requests",
            "Requests by front door (api: chat, messages, responses), alias, tier, rule and "
            "outcome.",
            ("api", "alias", "tier", "rule", "status", "error", "tenant"),
        )
        self.cache = _Counter(
            "flashpro_cache_requests",
            "Chat requests by response-cache result (hit, miss, bypass).",
            ("tier", "result"),
        )
        self.upstream_latency = _Histogram(
            "flashpro_upstream_latency_seconds",
            "Upstream call duration, to the last token.",
            ("tier",),
            LATENCY_BUCKETS,
        )
        self.ttft = _Histogram(
            "flashpro_time_to_first_token_seconds",
            "Streams: time from the upstream call to its first chunk.",
            ("tier",),
            LATENCY_BUCKETS,
        )
        self.tokens = _Counter(
            "flashpro_tokens",
            "Tokens the upstream reported: prompt, cached_prompt, completion (reasoning "
            "included) and reasoning.",
            ("tier", "kind"),
        )
        self.spend = _Counter(
            "flashpro_spend_usd", "Spend in USD, priced from the policy.", ("tier",)
        )
        self.baseline = _Counter(
            "flashpro_baseline_usd",
            "What the same usage would have cost on the savings baseline tier (all-Pro).",
            ("tier",),
        )
        self.savings = _Counter(
            "flashpro_savings_usd",
            "Estimated savings against the baseline tier (baseline minus spend; cache hits "
            "save their whole baseline cost).",
            ("tier",),
        )
        self._hot: tuple[_Counter | _Histogram, ...] = (
            self.requests,
            self.cache,
            self.upstream_latency,
            self.ttft,
            self.tokens,
            self.spend,
            self.baseline,
            self.savings,
        )
        if multiprocess is None:
            multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if multiprocess:
            for family in self._hot:
                family.bind(r)
        else:
            r.register(_Collected(self._hot))
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
        self.account_errors = Counter(
            "flashpro_upstream_account_errors",
            "Upstream calls refused for the upstream account, not the request (reason: "
            "insufficient_balance for DeepSeek's 402, auth for a refused key), by tier.",
            ["tier", "reason"],
            registry=r,
        )
        self.saturated = Counter(
            "flashpro_upstream_saturated",
            "Requests that found a tier at its max_concurrency past its queue_ms (moved to a "
            "fallback tier or answered 503).",
            ["tier"],
            registry=r,
        )
        self.in_flight = Gauge(
            "flashpro_upstream_in_flight",
            "Upstream calls in flight per upstream model (this process; summed over workers).",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.budget = Gauge(
            "flashpro_budget_remaining_usd",
            "USD left in each budget (total and group scopes; keys are not labelled).",
            ["scope", "period"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

        self.decision_log_dropped = Counter(
            "flashpro_decision_log_dropped_lines",
            "Decision-log lines dropped: unencodable (one bad record) or write_failed (disk).",
            ["reason"],
            registry=r,
        )
        self.learning = Counter(
            "flashpro_learning_comparisons",
            "Shadow comparisons by outcome (labelled, failed, skipped, cancelled) and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.learning_spend = Counter(
            "flashpro_learning_spend_usd",
            "USD spent on shadow comparisons: kind shadow (the other tier's answer) or judge.",
            ["kind"],
            registry=r,
        )
        self.started = Gauge(
            "flashpro_start_time_seconds",
            "When a flashpro worker started, unix time (the earliest of the workers).",
            multiprocess_mode="min",
            registry=r,
        )
        self.started.set(time.time())

    def request_done(self, record: RequestRecord) -> None:
        decision = record.decision
        status = status_class(record.status)
        error = record.error or ""
        tenant = (record.group or "") if record.options.tenant_labels else ""
        if decision is None:
            self.requests.inc((record.api, "-", "-", "-", status, error, tenant))
            return
        tier = decision.tier
        rule = rule_label(decision.rule)
        self.requests.inc((record.api, decision.alias or "-", tier, rule, status, error, tenant))
        by_tier = (tier,)
        if record.cost_usd > 0:  # a stream cut short is charged what it streamed
            self.spend.inc(by_tier, record.cost_usd)
        if record.status >= 400:
            return
        self.cache.inc((tier, record.cache))
        if record.upstream_ms is not None:
            self.upstream_latency.observe(by_tier, record.upstream_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.observe(by_tier, record.ttft_ms / 1000)
        if record.cache != "hit":
            usage = record.usage
            for kind, count in (
                ("prompt", usage.prompt_tokens),
                ("cached_prompt", usage.cache_hit_tokens),
                ("completion", usage.completion_tokens),
                ("reasoning", usage.reasoning_tokens),
            ):
                if count:
                    self.tokens.inc((tier, kind), count)
        if record.baseline_usd > 0:
            self.baseline.inc(by_tier, record.baseline_usd)
        savings = record.savings_usd
        if savings > 0:  # a counter only grows; Pro-Max can cost more than Pro
            self.savings.inc(by_tier, savings)

    def flush(self) -> None:
        """Multiprocess mode: write the counts since the last flush to this worker's files, where
        whichever worker answers /metrics reads them. A no-op in one process."""
        for family in self._hot:
            family.flush()

    def fallback(self, from_tier: str, to_tier: str, reason: str) -> None:
        """A request moved to another tier (reason: a short fixed word, e.g. timeout, 5xx)."""
        self.fallbacks.labels(from_tier, to_tier, reason).inc()

    def decision_log_drop(self, reason: str, lines: int) -> None:
        """Lines the decision log dropped: `unencodable` or `write_failed`."""
        self.decision_log_dropped.labels(reason).inc(lines)

    def breaker_state(self, tier: str, state: str) -> None:
        """A tier's circuit breaker changed state: closed, half_open or open."""
        self.breaker.labels(tier).set(BREAKER_STATES[state])

    def account_error(self, tier: str, reason: str) -> None:
        """An upstream call was refused for the account (no balance, refused key)."""
        self.account_errors.labels(tier, reason).inc()

    def tier_saturated(self, tier: str) -> None:
        """A request waited past a tier's queue_ms at its max_concurrency."""
        self.saturated.labels(tier).inc()

    def comparison(self, outcome: str, reason: str = "") -> None:
        """A shadow comparison ended (labelled, failed, skipped or cancelled; reason: a word)."""
        self.learning.labels(outcome, reason).inc()

    def learning_spent(self, kind: str, usd: float) -> None:
        """USD a shadow comparison spent: kind shadow or judge."""
        self.learning_spend.labels(kind).inc(usd)

    def upstream_in_flight(self, model: str, count: int) -> None:
        self.in_flight.labels(model).set(count)

    def budget_remaining(self, spent: Sequence[Spent], every_scope: bool = False) -> None:
        """USD left per budget scope, from the spend a request was admitted under, or at a
        scrape (`every_scope`: the live policy's budgets, so a reload's limits show at once
        and a budget the policy no longer has disappears)."""
        if every_scope and not os.environ.get(MULTIPROC_ENV):
            self.budget.clear()
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

            self.flush()  # this worker's own counts are current, the others' at most FLUSH_S old
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
