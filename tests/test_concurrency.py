"""The per-tier concurrency cap: slots handed over first come first served, a bounded wait,
a clean release whatever happens to the caller. In-process."""

from __future__ import annotations

import asyncio

import pytest

from router.errors import UpstreamSaturated
from router.upstream.concurrency import Concurrency, Held


def test_a_freed_slot_goes_to_the_longest_waiter() -> None:
    async def go() -> list[str]:
        gates, order = Concurrency(), []
        first = await gates.acquire("k", 1, 1.0, "flash")

        async def wait(name: str) -> None:
            release = await gates.acquire("k", 1, 1.0, "flash")
            order.append(name)
            release()

        waiters = [asyncio.create_task(wait(n)) for n in ("a", "b")]
        await asyncio.sleep(0.01)
        assert order == [] and gates.in_flight("k") == 1
        first()
        first()  # a second release does nothing
        await asyncio.gather(*waiters)
        assert gates.in_flight("k") == 0
        return order

    assert asyncio.run(go()) == ["a", "b"]


def test_no_slot_in_time_is_a_503_with_retry_after() -> None:
    async def go() -> None:
        gates = Concurrency()
        await gates.acquire("k", 1, 1.0, "pro")
        with pytest.raises(UpstreamSaturated) as caught:
            await gates.acquire("k", 1, 0.02, "pro")
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
        assert "'pro'" in caught.value.message
        assert gates.in_flight("k") == 1

    asyncio.run(go())


def test_without_a_limit_calls_are_counted_not_held() -> None:
    async def go() -> None:
        gates, counts = Concurrency(), []
        releases = [await gates.acquire("k", None, 0.0, "flash", counts.append) for _ in range(3)]
        for release in releases:
            release()
        assert counts == [1, 2, 3, 2, 1, 0]

    asyncio.run(go())


def test_a_waiter_that_leaves_passes_its_turn_on() -> None:
    async def go() -> None:
        gates = Concurrency()
        release = await gates.acquire("k", 1, 1.0, "flash")
        leaving = asyncio.create_task(gates.acquire("k", 1, 1.0, "flash"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.sleep(0)
        release()
        again = await gates.acquire("k", 1, 0.1, "flash")
        assert gates.in_flight("k") == 1
        again()
        assert gates.in_flight("k") == 0

    asyncio.run(go())


def test_a_held_stream_releases_its_slot_when_closed_before_reading() -> None:
    async def go() -> None:
        gates = Concurrency()
        release = await gates.acquire("k", 1, 1.0, "flash")

        async def chunks() -> object:
            yield 1

        held = Held(chunks(), release)  # type: ignore[arg-type]
        await held.aclose()
        assert gates.in_flight("k") == 0

    asyncio.run(go())


def test_a_held_stream_releases_its_slot_at_its_end() -> None:
    async def go() -> list[int]:
        gates = Concurrency()
        release = await gates.acquire("k", 1, 1.0, "flash")

        async def chunks():  # type: ignore[no-untyped-def]
            yield 1
            yield 2

        got = [c async for c in Held(chunks(), release)]
        assert gates.in_flight("k") == 0
        return got

    assert asyncio.run(go()) == [1, 2]
