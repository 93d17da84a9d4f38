"""Token usage and what it costs under a tier's prices. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.routing.policy import Prices


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them (DeepSeek's cache fields included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def cache_miss_tokens(self) -> int:
        return max(self.prompt_tokens - self.cache_hit_tokens, 0)

    @classmethod
    def from_wire(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read an OpenAI/DeepSeek `usage` object; missing fields count as zero."""
        if not usage:
            return cls()
        hit = usage.get("prompt_cache_hit_tokens")
        if hit is None:
            details = usage.get("prompt_tokens_details") or {}
            hit = details.get("cached_tokens") or 0
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cache_hit_tokens=int(hit),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


def cost_usd(usage: Usage, prices: Prices) -> float:
    """USD for one call: cache-hit input, cache-miss input and output (reasoning included)."""
    return (
        usage.cache_hit_tokens * prices.cached_input_usd_per_mtok
        + usage.cache_miss_tokens * prices.input_usd_per_mtok
        + usage.completion_tokens * prices.output_usd_per_mtok
    ) / 1_000_000
