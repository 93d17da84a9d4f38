"""The spend ledger: spend per scope per UTC day and month, in process or in Redis (shared by
every flashpro process). Does I/O (Redis).

Spend is added with INCRBYFLOAT on a day and a month key per scope (with expiry) in one MULTI
transaction, so concurrent processes never lose an update; a budget can be overshot only by the
requests already in flight when it runs out. During a Redis outage each process keeps its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from router.state.store import FAILURES, PREFIX, Client, Outage


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month a moment falls in, as ledger key suffixes."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%Y%m")


class Ledger(Protocol):
    """Spend per scope per UTC day and month."""

    async def spent(self, scopes: Sequence[str], now: float) -> list[tuple[float, float]]: ...

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryLedger:
    """This process's spend (no Redis, or Redis down)."""

    def __init__(self) -> None:
        self._usd: dict[tuple[str, str], float] = {}

    async def spent(self, scopes: Sequence[str], now: float) -> list[tuple[float, float]]:
        day, month = periods(now)
        return [
            (self._usd.get((scope, day), 0.0), self._usd.get((scope, month), 0.0))
            for scope in scopes
        ]

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        for scope in scopes:
            for period in periods(now):
                self._usd[(scope, period)] = self._usd.get((scope, period), 0.0) + usd

    async def aclose(self) -> None:
        return None


_DAY_S = 2 * 86_400  # a day key outlives its day, so late readers near midnight still see it


_MONTH_S = 32 * 86_400


class RedisLedger:
    def __init__(
        self, client: Client, log: logging.Logger | None = None, namespace: str = ""
    ) -> None:
        # spend is kept per upstream set: a simulated flashpro never charges a real one's budget
        self._prefix = f"{PREFIX}:spend:{namespace}" if namespace else f"{PREFIX}:spend"
        self._client = client
        self._fallback = MemoryLedger()
        self._outage = Outage("spend ledger", log or logging.getLogger("flashpro.store"))

    def _keys(self, scope: str, now: float) -> tuple[str, str]:
        day, month = periods(now)
        return f"{self._prefix}:{scope}:d:{day}", f"{self._prefix}:{scope}:m:{month}"

    async def spent(self, scopes: Sequence[str], now: float) -> list[tuple[float, float]]:
        keys = [key for scope in scopes for key in self._keys(scope, now)]
        try:
            values = await self._client.mget(keys)
        except FAILURES as exc:
            self._outage.failed(exc)
            return await self._fallback.spent(scopes, now)
        self._outage.ok()
        amounts = [float(v) if v is not None else 0.0 for v in values]
        return [(amounts[i], amounts[i + 1]) for i in range(0, len(amounts), 2)]

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for scope in scopes:
                    day, month = self._keys(scope, now)
                    pipe.incrbyfloat(day, usd)
                    pipe.expire(day, _DAY_S)
                    pipe.incrbyfloat(month, usd)
                    pipe.expire(month, _MONTH_S)
                await pipe.execute()
        except FAILURES as exc:
            self._outage.failed(exc)
            await self._fallback.add(scopes, usd, now)
            return
        self._outage.ok()

    async def aclose(self) -> None:
        await self._client.aclose()
