"""Cap the upstream calls in flight per account and model, as DeepSeek does. In-process state.

DeepSeek counts a request as one concurrent connection from when it is sent until its answer is
complete, per account and per model, and answers 429 past the limit (2,500 for deepseek-flash,
500 for deepseek-v4-pro: api-docs.deepseek.com/quick_start/rate_limit). flashpro keeps its own
count under the tier's `max_concurrency` so it queues a request briefly, then sheds it with a
503 and Retry-After (or falls back to another tier) before DeepSeek starts refusing. The count
is per flashpro process: with N processes, give each `max_concurrency / N`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from router.errors import UpstreamSaturated

T = TypeVar("T")


@dataclass
class _Gate:
    limit: int
    in_flight: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def release(self) -> None:
        """Hand the slot to the longest waiter still waiting, else free it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


class Concurrency:
    """In-flight calls per (upstream identity, model); `acquire` returns the release function."""

    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def in_flight(self, key: str) -> int:
        gate = self._gates.get(key)
        return gate.in_flight if gate is not None else 0

    async def acquire(
        self,
        key: str,
        limit: int | None,
        wait_s: float,
        tier: str,
        counted: Callable[[int], None] = lambda in_flight: None,
    ) -> Callable[[], None]:
        """Take a slot under `limit` (None: unlimited, still counted), first come first served,
        waiting up to `wait_s`; raises UpstreamSaturated when none frees in time. Call the
        result once to release (later calls do nothing). `counted` hears the count after each
        change (a metric)."""
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(limit or 0)
        gate.limit = limit or 0  # a reloaded policy's limit applies from the next request
        if gate.limit and (gate.in_flight >= gate.limit or gate.waiters):
            await _wait(gate, wait_s, tier)  # a released slot is handed over, still counted
        else:
            gate.in_flight += 1
        counted(gate.in_flight)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                gate.release()
                counted(gate.in_flight)

        return release


async def _wait(gate: _Gate, wait_s: float, tier: str) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gate.waiters.append(waiter)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), wait_s)
    except TimeoutError:
        if waiter.done():  # handed a slot just as the wait ran out: take it
            return
        waiter.cancel()
        raise UpstreamSaturated(
            f"Tier '{tier}' has {gate.limit} upstream calls in flight, its policy's "
            "max_concurrency; try again shortly.",
            headers={"Retry-After": "1"},
        ) from None
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled():
            gate.release()  # the client left after being handed a slot: pass it on
        waiter.cancel()
        raise


class Held(Generic[T]):
    """The rest of a stream, holding its concurrency slot until the stream ends or is closed
    (DeepSeek counts a request until its answer is complete)."""

    def __init__(self, chunks: AsyncIterator[T], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release = release

    def __aiter__(self) -> Held[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await anext(self._chunks)
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
