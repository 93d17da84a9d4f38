"""Per-key request and token rates (fixed one-minute windows) and request-shape caps. The checks
are pure; the counters (router/state/counter.py) are in-process or in Redis (shared by every
flashpro process, falling back to this process's memory while Redis is down)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.errors import InvalidRequest, RateLimited
from router.routing.limits import RequestLimits
from router.routing.policy import Policy
from router.schemas import ChatRequest
from router.state.counter import Counter, MemoryCounter, RedisCounter
from router.state.store import Store, open_store

WINDOW_S = 60
ANONYMOUS = "anonymous"  # the scope of requests without a bearer key (an open proxy)


def limits_for(policy: Policy, group: str | None) -> RequestLimits | None:
    """The policy's `limits`, with the caller's group overriding them field by field."""
    profile = policy.groups.get(group or "")
    if profile is not None and profile.limits is not None:
        return profile.limits.over(policy.limits)
    return policy.limits


def check_shape(limits: RequestLimits | None, request: ChatRequest) -> None:
    """400 for a request over the message, max_tokens or n caps."""
    if limits is None:
        return
    if limits.max_messages is not None and len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(request.messages)} (at most {limits.max_messages}).",
            param="messages",
        )
    cap = limits.max_tokens_cap
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, name)
        if cap is not None and value is not None and value > cap:
            raise InvalidRequest(f"{name} is {value}; at most {cap} is allowed.", param=name)
    if limits.max_n is not None and (request.n or 1) > limits.max_n:
        raise InvalidRequest(f"n is {request.n}; at most {limits.max_n} is allowed.", param="n")


@dataclass
class RateLimiter:
    """Counts each key's requests and tokens per minute and refuses what is over the limits."""

    counter: Counter = field(default_factory=MemoryCounter)
    clock: Callable[[], float] = time.time

    def _window(self) -> tuple[int, int]:
        """The current minute, and the whole seconds until it ends (the Retry-After)."""
        now = self.clock()
        minute = int(now // WINDOW_S)
        return minute, max(1, math.ceil((minute + 1) * WINDOW_S - now))

    async def admit(self, limits: RequestLimits | None, scope: str | None) -> None:
        """Count one request; 429 with Retry-After when the key is over a per-minute limit."""
        if limits is None or (limits.requests_per_minute is None and not limits.tokens_per_minute):
            return
        minute, retry_after = self._window()
        base = f"{scope or ANONYMOUS}:{minute}"
        if limits.tokens_per_minute is not None:
            used = await self.counter.get(f"tok:{base}")
            if used >= limits.tokens_per_minute:
                raise _limited(f"{limits.tokens_per_minute} tokens per minute", retry_after)
        if limits.requests_per_minute is not None:
            count = await self.counter.add(f"req:{base}", 1, 2 * WINDOW_S)
            if count > limits.requests_per_minute:
                raise _limited(f"{limits.requests_per_minute} requests per minute", retry_after)

    async def used(self, limits: RequestLimits | None, scope: str | None, tokens: int) -> None:
        """Count an answer's tokens toward the key's tokens-per-minute."""
        if limits is None or limits.tokens_per_minute is None or tokens <= 0:
            return
        minute, _ = self._window()
        await self.counter.add(f"tok:{scope or ANONYMOUS}:{minute}", tokens, 2 * WINDOW_S)

    async def aclose(self) -> None:
        await self.counter.aclose()


def _limited(what: str, retry_after: int) -> RateLimited:
    return RateLimited(
        f"Rate limit reached: this key may send {what}. Retry after {retry_after}s.",
        headers={"Retry-After": str(retry_after)},
    )


def open_rate_limiter(redis: str | Store | None) -> RateLimiter:
    """Counters in Redis when it is configured (a URL, or the store the budgets share), shared
    by every process, else in memory."""
    shared = open_store(redis) if isinstance(redis, str) else redis
    return RateLimiter(RedisCounter(shared)) if shared is not None else RateLimiter()
