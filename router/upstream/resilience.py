"""Retries with backoff, the fallback chain and a circuit breaker per tier, around one upstream
call. The chain and the delays are pure functions; `Resilience` keeps the breakers (per process)
and sleeps between attempts.

Only failures that another attempt may cure are retried: 429, 5xx, timeouts and dropped
connections (`RETRYABLE`); they are also the only request failures a breaker counts, as they
say something about the tier's health. Any other 4xx (400, 404, 413, 422...) is the request's
fault: raised at once, and to the breaker the tier answered. A first-byte timeout (a request
queued upstream) falls back at once: the same tier would queue the retry too. A full
connection pool (`UpstreamBusy`) is flashpro's own limit: raised at once, counted for nothing.
An account failure (DeepSeek's 402 Insufficient Balance, a refused key) is raised at once too,
with no retry and no fallback (another call would only repeat it), but counts against the
tier's breaker, so a drained account stops being called for `open_seconds`. A tier at its own
`max_concurrency` is skipped for the next one in the chain without touching its breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from router.errors import (
    FlashproError,
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamBalanceExhausted,
    UpstreamBusy,
    UpstreamError,
    UpstreamQueued,
    UpstreamRateLimited,
    UpstreamSaturated,
    UpstreamTimeout,
)
from router.routing.constrain import retarget, usable_tiers
from router.routing.decision import Decision
from router.routing.limits import Breaker, Retries
from router.routing.policy import Policy

T = TypeVar("T")
RETRYABLE = (UpstreamRateLimited, UpstreamTimeout, UpstreamError)
ACCOUNT_FAILURES = (UpstreamBalanceExhausted, UpstreamAuthFailed)


def chain(policy: Policy, tier: str, group: str | None = None, images: bool = False) -> list[str]:
    """The tiers to try for a request routed to `tier`, in order, the tier itself first.

    Without `fallbacks:` each tier falls back to the cheaper tiers, strongest first, and the
    cheapest tier to the next one up. Tiers the caller's group may not use are left out, and
    for a request with images, tiers that do not read them.
    """
    names = list(policy.tiers)
    if policy.fallbacks is not None:
        rest = policy.fallbacks.get(tier, [])
    elif names.index(tier) > 0:
        rest = names[: names.index(tier)][::-1]
    else:
        rest = names[1:2]
    usable = [t for t in usable_tiers(policy, group) if policy.tiers[t].vision or not images]
    return [tier, *(t for t in rest if t in usable and t != tier)]


def delay_s(retries: Retries, retry: int, error: FlashproError) -> float:
    """How long to wait before retry number `retry` (0-based): the upstream's Retry-After when
    it gave one, else exponential backoff; both capped by the policy."""
    given = error.headers.get("Retry-After")
    if given is not None:
        try:
            return min(max(float(given), 0.0), retries.retry_after_max_s)
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    return min(retries.backoff_initial_ms * 2.0**retry, retries.backoff_max_ms) / 1000


def fallback_decision(policy: Policy, decision: Decision, tier: str) -> Decision:
    """The decision re-pointed at a fallback tier (what the headers and the ledger report)."""
    if tier == decision.tier:
        return decision
    return retarget(
        policy,
        decision,
        tier,
        reason=f"{decision.reason}; fell back from {decision.tier} to {tier}",
    )


@dataclass(frozen=True, slots=True)
class Trail:
    """How an answer was obtained: the calls made, and the fallback taken if any."""

    attempts: int = 1
    fallback: str | None = None  # e.g. "pro-max->pro (upstream_rate_limited)"

    def headers(self) -> dict[str, str]:
        headers = {"x-flashpro-attempts": str(self.attempts)}
        if self.fallback is not None:
            headers["x-flashpro-fallback"] = self.fallback
        return headers


NO_TRAIL = Trail()


@dataclass
class Circuit:
    """One tier's breaker: closed, open (skipped) for `open_seconds`, then one half-open probe."""

    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def allows(self, rules: Breaker, now: float) -> bool:
        if self.opened_at is None:
            return True
        if self.probing or now - self.opened_at < rules.open_seconds:
            return False
        self.probing = True  # half-open: this caller probes, others keep skipping
        return True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failed(self, rules: Breaker, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= rules.failures:
            self.opened_at, self.probing = now, False

    def abandoned(self) -> None:
        """The call was cancelled (client gone): it proved nothing, so let another probe."""
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing else "open"


class Resilience:
    """Runs upstream calls under the policy's retries, fallbacks and circuit breakers."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._circuits: dict[str, Circuit] = {}

    def circuit(self, tier: str) -> Circuit:
        return self._circuits.setdefault(tier, Circuit())

    async def call(
        self,
        policy: Policy,
        decision: Decision,
        attempt: Callable[[Decision], Awaitable[T]],
        group: str | None = None,
        images: bool = False,
    ) -> tuple[T, Decision, Trail]:
        """`attempt(decision)` along the fallback chain; the answer, the decision of the tier
        that gave it, and the trail. Raises the last failure when every tier failed."""
        calls = 0
        tried: list[str] = []
        reason: str | None = None
        last: FlashproError | None = None
        for tier in chain(policy, decision.tier, group, images):
            circuit = self.circuit(tier)
            if not circuit.allows(policy.breaker, self._clock()):
                reason = reason or "circuit_open"
                continue
            tried.append(tier)
            chosen = fallback_decision(policy, decision, tier)
            for retry in range(policy.retries.max_attempts):
                calls += 1
                try:
                    value = await attempt(chosen)
                except UpstreamSaturated as exc:
                    last, reason = exc, reason or exc.code
                    break  # the tier is busy here, not failing: the next tier may have room
                except ACCOUNT_FAILURES:
                    circuit.failed(policy.breaker, self._clock())
                    raise
                except RETRYABLE as exc:
                    circuit.failed(policy.breaker, self._clock())
                    last, reason = exc, reason or exc.code or "upstream_error"
                    if (
                        isinstance(exc, UpstreamQueued)
                        or retry + 1 >= policy.retries.max_attempts
                        or circuit.opened_at is not None
                    ):
                        break
                    await self._sleep(delay_s(policy.retries, retry, exc))
                    continue
                except UpstreamBusy:
                    circuit.abandoned()  # the upstream was not reached: nothing learnt
                    raise
                except FlashproError:
                    circuit.succeeded()  # the tier answered; the request was at fault
                    raise
                except BaseException:
                    circuit.abandoned()
                    raise
                circuit.succeeded()
                return value, chosen, _trail(decision.tier, tier, tried, calls, reason)
        if last is not None:
            raise last
        raise ServiceUnavailable(
            "Every upstream tier for this request is failing; try again shortly.",
            headers={"Retry-After": str(max(1, round(policy.breaker.open_seconds)))},
        )


def _trail(routed: str, answered: str, tried: list[str], calls: int, reason: str | None) -> Trail:
    if answered == routed:
        return Trail(calls)
    path = "->".join([routed, *(t for t in tried if t != routed)])
    return Trail(calls, f"{path} ({reason or 'circuit_open'})")
