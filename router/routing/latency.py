"""Expected latency of a tier for a request (pure) and the in-process learner of latency profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.routing.policy import Tier


@dataclass(frozen=True, slots=True)
class Profile:
    """A tier's latency: time to the first token and output speed (reasoning included)."""

    ttft_ms: float
    tokens_per_s: float


def profile_of(tier: Tier, learned: Mapping[str, Profile], name: str) -> Profile:
    return learned.get(name) or Profile(tier.latency.ttft_ms, tier.latency.tokens_per_s)


def expected_tokens(tier: Tier, max_tokens: int | None) -> int:
    """Tokens the tier is expected to generate: the answer (max_tokens, else the tier's
    default) plus, on thinking tiers, its reasoning."""
    answer = max_tokens if max_tokens is not None else tier.expected_output_tokens
    reasoning = tier.expected_reasoning_tokens if tier.thinking == "enabled" else 0
    return answer + reasoning


def expected_latency_ms(tier: Tier, profile: Profile, max_tokens: int | None) -> float:
    return profile.ttft_ms + expected_tokens(tier, max_tokens) / profile.tokens_per_s * 1000.0


class LatencyLearner:
    """Exponential moving averages of ttft and tokens/s per tier, in this process only."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}

    def profiles(self) -> Mapping[str, Profile]:
        return dict(self._profiles)

    def observe(
        self,
        name: str,
        tier: Tier,
        alpha: float,
        *,
        total_ms: float,
        tokens: int,
        ttft_ms: float | None = None,
    ) -> None:
        """Fold in one answer. Without a measured ttft (whole answers) the current ttft estimate
        is assumed, and the rest of the time is spent generating."""
        current = profile_of(tier, self._profiles, name)
        ttft = ttft_ms if ttft_ms is not None else current.ttft_ms
        generating_s = (total_ms - ttft) / 1000.0
        speed = tokens / generating_s if tokens > 0 and generating_s > 0 else current.tokens_per_s
        self._profiles[name] = Profile(
            ttft_ms=current.ttft_ms + alpha * (ttft - current.ttft_ms),
            tokens_per_s=current.tokens_per_s + alpha * (speed - current.tokens_per_s),
        )
