"""Live calibration: the recent scores of each `calibration: live` alias, and the thresholds their
quantiles give, read at admission and handed to decide() as data; in process or in Redis (shared
by every flashpro process). Does I/O (Redis).

A live alias's shares are turned into thresholds from the scores its own traffic produced, so
"12% to Pro" stays 12% when the mix shifts. Until WARMUP scores are seen, the alias keeps the
thresholds of the classifier's calibration set (decide() uses them when no live ones are given).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.routing.decide import WARMUP, live_thresholds
from router.routing.decision import Thresholds
from router.routing.policy import Policy
from router.state.store import PREFIX, Client, Store, StoreDown

WINDOW = 2000  # scores kept per alias: the most recent ones

Seen = tuple[float, str]  # a routed request's score and the tier that served it


class ScoreWindow(Protocol):
    """The last WINDOW (score, tier) pairs routed through each alias, newest first."""

    async def recent(self, alias: str) -> list[Seen]: ...

    async def add(self, alias: str, score: float, tier: str) -> None: ...


class MemoryScoreWindow:
    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        self._seen: dict[str, deque[Seen]] = {}

    async def recent(self, alias: str) -> list[Seen]:
        return list(reversed(self._seen.get(alias, ())))

    async def add(self, alias: str, score: float, tier: str) -> None:
        window = self._seen.get(alias)
        if window is None:
            window = self._seen[alias] = deque(maxlen=self._size)
        window.append((score, tier))


class RedisScoreWindow:
    """One capped Redis list per alias ("score tier" entries, newest first). Every write also
    goes to this process's memory, which answers while Redis is down."""

    def __init__(self, store: Store, namespace: str = "", size: int = WINDOW) -> None:
        base = f"{PREFIX}:calibration"
        self._prefix = f"{base}:{namespace}" if namespace else base
        self._store = store
        self._size = size
        self._fallback = MemoryScoreWindow(size)

    def _key(self, alias: str) -> str:
        return f"{self._prefix}:{alias}"

    async def recent(self, alias: str) -> list[Seen]:
        async def read(client: Client) -> list[Any]:
            return list(await client.lrange(self._key(alias), 0, self._size - 1))

        try:
            rows = await self._store.call(read)
        except StoreDown:
            return await self._fallback.recent(alias)
        return [seen for row in rows if (seen := _parsed(row)) is not None]

    async def add(self, alias: str, score: float, tier: str) -> None:
        await self._fallback.add(alias, score, tier)

        async def push(client: Client) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.lpush(self._key(alias), f"{score!r} {tier}")
                pipe.ltrim(self._key(alias), 0, self._size - 1)
                await pipe.execute()

        try:
            await self._store.call(push)
        except StoreDown:
            return


def _parsed(row: bytes | str) -> Seen | None:
    text = row.decode() if isinstance(row, bytes) else row
    score, _, tier = text.partition(" ")
    try:
        return float(score), tier
    except ValueError:
        return None


def actual_shares(policy: Policy, alias: str, seen: Sequence[Seen]) -> dict[str, float | None]:
    """For each tier the alias gives a share, the share of `seen` served at that tier or above."""
    spec = policy.aliases[alias]
    ranks = [policy.rank(tier) for _, tier in seen if tier in policy.tiers]
    return {
        tier: (sum(r >= policy.rank(tier) for r in ranks) / len(ranks) if ranks else None)
        for tier in spec.shares or {}
    }


def live_aliases(policy: Policy) -> list[str]:
    return [name for name, alias in policy.aliases.items() if alias.calibration == "live"]


@dataclass
class LiveCalibration:
    """Live aliases' thresholds for admission, recomputed from the window at most every
    `refresh_s` seconds per process (a window read and a sort is not per-request work)."""

    window: ScoreWindow = field(default_factory=MemoryScoreWindow)
    refresh_s: float = 1.0
    _cached: dict[str, tuple[float, Thresholds | None]] = field(default_factory=dict)

    async def thresholds(self, policy: Policy) -> dict[str, Thresholds]:
        """Live thresholds of the policy's live aliases past their warm-up."""
        now = time.monotonic()
        found: dict[str, Thresholds] = {}
        for alias in live_aliases(policy):
            at, steps = self._cached.get(alias, (-math.inf, None))
            if now - at >= self.refresh_s:
                seen = await self.window.recent(alias)
                steps = live_thresholds(policy, alias, [score for score, _ in seen])
                self._cached[alias] = (now, steps)
            if steps is not None:
                found[alias] = steps
        return found

    def current(self, alias: str) -> Thresholds | None:
        """The live thresholds admission last used for `alias` (None: warming up, or not live)."""
        return self._cached.get(alias, (0.0, None))[1]

    async def seen(self, policy: Policy, alias: str | None, score: float, tier: str) -> None:
        """Count a routed request's score toward its alias's window, if the alias is live."""
        spec = policy.aliases.get(alias or "")
        if alias is not None and spec is not None and spec.calibration == "live":
            await self.window.add(alias, score, tier)

    async def report(
        self, policy: Policy, fixed: Mapping[str, Thresholds]
    ) -> dict[str, dict[str, Any]]:
        """Per live alias: scores observed, whether it is warming up, and per tier the target
        share, the actual share of the window and the threshold in use."""
        report: dict[str, dict[str, Any]] = {}
        for alias in live_aliases(policy):
            seen = await self.window.recent(alias)
            steps = live_thresholds(policy, alias, [score for score, _ in seen]) or fixed[alias]
            in_use = dict(steps.steps)
            actual = actual_shares(policy, alias, seen)
            shares = policy.aliases[alias].shares or {}
            report[alias] = {
                "observed": len(seen),
                "warming_up": len(seen) < WARMUP,
                "tiers": {
                    tier: {
                        "target": share,
                        "actual": actual[tier],
                        "threshold": in_use[tier] if math.isfinite(in_use[tier]) else None,
                    }
                    for tier, share in shares.items()
                },
            }
        return report
