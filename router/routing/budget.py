"""Budget holds: what an admitted request is expected to cost, reserved against its budgets
until the answer is charged. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from router.routing.cost import Usage, cost_usd
from router.routing.policy import Policy, Tier

HOLD_SLACK_S = 60.0  # a hold outlives the longest call it can cover by this much


@dataclass(frozen=True, slots=True)
class Hold:
    """An amount reserved against budget scopes for one request in flight. The ledger keeps it
    until the request is charged (settled with its real cost) or fails (released); a hold its
    process never settles (a crash) lapses at `expires_at` (unix seconds)."""

    token: str
    scopes: tuple[str, ...]
    usd: float
    expires_at: float


def expected_usage(tier: Tier, prompt_tokens: int, max_tokens: int | None) -> Usage:
    """The usage an answer is expected to report: the whole prompt as cache-miss input, the
    tier's expected answer (at most the request's output limit) and its reasoning."""
    answer = tier.expected_output_tokens
    if max_tokens is not None:
        answer = min(answer, max_tokens)
    reasoning = tier.expected_reasoning_tokens if tier.thinking == "enabled" else 0
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=answer + reasoning)


def expected_cost(
    policy: Policy, tier: str, prompt_tokens: int, max_tokens: int | None, now: float
) -> float:
    """What an answer from `tier` is expected to cost at `now` (unix seconds): its expected
    usage at the tier's prices then."""
    usage = expected_usage(policy.tiers[tier], prompt_tokens, max_tokens)
    return cost_usd(usage, policy.prices_at(tier, datetime.fromtimestamp(now, UTC)))


def hold_ttl_s(policy: Policy) -> float:
    """How long a hold may stay unsettled: twice the slowest tier's call timeout (retries and
    fallbacks included), plus slack."""
    return 2 * max(tier.timeout_s for tier in policy.tiers.values()) + HOLD_SLACK_S
