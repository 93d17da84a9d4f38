"""In-process rolling aggregates behind the dashboard and `flashpro stats`: totals since start,
per-tier latency percentiles, a time series in small buckets and the latest decisions. Pure
(the clock comes in with each record); one process's view (each worker keeps its own)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from router.observe.record import RequestRecord
from router.routing.decision import Decision

BUCKET_S = 10
WINDOW_S = 30 * 60
LATENCY_SAMPLES = 500
RECENT = 30


@dataclass
class _Bucket:
    start: float
    tiers: dict[str, int] = field(default_factory=dict)
    spend_usd: float = 0.0
    savings_usd: float = 0.0
    hits: int = 0


@dataclass
class _Tier:
    rank: int
    requests: int = 0
    spend_usd: float = 0.0
    savings_usd: float = 0.0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


_Recent = tuple[str, float, "Decision", str, float, float]  # id, at, decision, cache, ms, cost


def _recent_row(
    request_id: str, at: float, decision: Decision, cache: str, latency_ms: float, cost: float
) -> dict[str, Any]:
    return {
        "id": request_id,
        "at": at,
        "alias": decision.alias,
        "tier": decision.tier,
        "score": round(decision.score, 4),
        "rule": decision.rule,
        "reason": decision.reason,
        "cache": cache,
        "latency_ms": round(latency_ms, 1),
        "cost_usd": cost,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of unsorted values; None when there are none."""
    if not values:
        return None
    ranked = sorted(values)
    index = min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))
    return ranked[index]


class Rolling:
    def __init__(self, bucket_s: int = BUCKET_S, window_s: int = WINDOW_S) -> None:
        self.bucket_s = bucket_s
        self.window_s = window_s
        self.requests = 0
        self.errors = 0
        self.cache = {"hit": 0, "miss": 0, "bypass": 0}
        self.spend_usd = 0.0
        self.baseline_usd = 0.0
        self.tiers: dict[str, _Tier] = {}
        self.buckets: deque[_Bucket] = deque()
        self.recent: deque[_Recent] = deque(maxlen=RECENT)

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        decision = record.decision
        cost = record.cost_usd
        if record.status >= 400 or decision is None:
            self.errors += 1
            self.spend_usd += cost  # a stream cut short is charged what it streamed
            return
        cache = record.cache
        self.cache[cache] = self.cache.get(cache, 0) + 1
        self.spend_usd += cost
        self.baseline_usd += record.baseline_usd
        savings = record.savings_usd
        name = decision.tier
        tier = self.tiers.get(name)
        if tier is None:
            tier = self.tiers[name] = _Tier(record.tier_rank)
        tier.requests += 1
        tier.spend_usd += cost
        tier.savings_usd += savings
        if cache != "hit":
            tier.latency_ms.append(record.latency_ms)
        if record.ttft_ms is not None:
            tier.ttft_ms.append(record.ttft_ms)
        bucket = self._bucket(record.at)
        bucket.tiers[name] = bucket.tiers.get(name, 0) + 1
        bucket.spend_usd += cost
        bucket.savings_usd += savings
        bucket.hits += cache == "hit"
        # the snapshot, not every request, turns these into the dashboard's rows
        self.recent.append((record.request_id, record.at, decision, cache, record.latency_ms, cost))

    def _bucket(self, at: float) -> _Bucket:
        if self.buckets:
            last = self.buckets[-1]
            if last.start <= at < last.start + self.bucket_s:
                return last  # still the newest bucket: older ones were dropped when it began
        start = at - at % self.bucket_s
        if not self.buckets or self.buckets[-1].start < start:
            self.buckets.append(_Bucket(start))
        while self.buckets and self.buckets[0].start <= start - self.window_s:
            self.buckets.popleft()
        return self.buckets[-1]

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the dashboard draws, as plain JSON data."""
        names = sorted(self.tiers, key=lambda name: self.tiers[name].rank)
        served = sum(t.requests for t in self.tiers.values())
        looked_up = self.cache["hit"] + self.cache["miss"]
        horizon = now - self.window_s
        return {
            "now": now,
            "bucket_s": self.bucket_s,
            "tiers": names,
            "totals": {
                "requests": self.requests,
                "errors": self.errors,
                "spend_usd": self.spend_usd,
                "baseline_usd": self.baseline_usd,
                "savings_usd": self.baseline_usd - self.spend_usd,
                "cache": dict(self.cache),
                "hit_rate": self.cache["hit"] / looked_up if looked_up else None,
            },
            "by_tier": {name: self._tier_summary(self.tiers[name], served) for name in names},
            "series": [
                {
                    "t": b.start,
                    "tiers": dict(b.tiers),
                    "spend_usd": b.spend_usd,
                    "savings_usd": b.savings_usd,
                    "hits": b.hits,
                }
                for b in self.buckets
                if b.start > horizon
            ],
            "recent": [_recent_row(*recent) for recent in reversed(self.recent)],
        }

    @staticmethod
    def _tier_summary(tier: _Tier, served: int) -> dict[str, Any]:
        latency, ttft = list(tier.latency_ms), list(tier.ttft_ms)
        return {
            "requests": tier.requests,
            "share": tier.requests / served if served else 0.0,
            "spend_usd": tier.spend_usd,
            "savings_usd": tier.savings_usd,
            "p50_ms": percentile(latency, 0.5),
            "p95_ms": percentile(latency, 0.95),
            "ttft_p50_ms": percentile(ttft, 0.5),
        }
