"""The spend ledger on a real Redis: holds that count across processes, settlement, lapsed
holds, the breaker in front of a hung Redis, and spend reconciled after an outage, once."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from router.routing.budget import Hold
from router.routing.limits import BudgetLimit
from router.state.ledger import MemoryLedger, RedisLedger
from router.state.store import Breaker, Store, StoreDown, connect
from tests.conftest import RedisServer, free_port, own_redis_server

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DOLLAR_A_DAY = BudgetLimit(usd_per_day=1.0)
TIMEOUT_S = 0.25


def hold(usd: float, scopes: tuple[str, ...] = ("total",), ttl_s: float = 60.0) -> Hold:
    return Hold(uuid.uuid4().hex, scopes, usd, NOW + ttl_s)


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own, so stopping it disturbs no other test."""
    with own_redis_server() as server:
        yield server


@pytest.fixture
async def ledgers(own_redis: RedisServer) -> AsyncIterator[tuple[RedisLedger, RedisLedger]]:
    """Two ledgers on one Redis, as two flashpro processes hold them."""
    redis.Redis.from_url(own_redis.url).flushdb()
    one = RedisLedger(Store(connect(own_redis.url, TIMEOUT_S)))
    two = RedisLedger(Store(connect(own_redis.url, TIMEOUT_S)))
    yield one, two
    if own_redis.process is not None:
        own_redis.process.send_signal(signal.SIGCONT)
    await one.aclose()
    await two.aclose()


async def test_holds_in_flight_count_against_the_budget_in_every_process(
    ledgers: tuple[RedisLedger, RedisLedger],
) -> None:
    one, two = ledgers
    claims = [("total", DOLLAR_A_DAY)]
    first, second = hold(0.6), hold(0.6)
    assert await one.reserve(claims, first, NOW, check=True) is None
    assert await two.reserve(claims, second, NOW, check=True) is None
    # both holds are in flight: the budget is taken, whichever process asks
    assert await one.reserve(claims, hold(0.01), NOW, check=True) == [(1.2, 1.2)]
    assert await two.spent(["total"], NOW) == [(1.2, 1.2)]
    await one.settle(first, 0.1, NOW)  # the answer cost less than expected
    assert await two.spent(["total"], NOW) == [pytest.approx((0.7, 0.7))]
    await two.release(second, NOW)  # the request failed: nothing is charged
    assert await one.spent(["total"], NOW) == [pytest.approx((0.1, 0.1))]
    assert await two.reserve(claims, hold(0.5), NOW, check=True) is None


async def test_an_unchecked_hold_is_taken_even_past_the_budget(
    ledgers: tuple[RedisLedger, RedisLedger],
) -> None:
    one, _ = ledgers
    claims = [("total", DOLLAR_A_DAY)]
    await one.add(["total"], 1.5, NOW)
    assert await one.reserve(claims, hold(0.2), NOW, check=True) == [(1.5, 1.5)]
    assert await one.reserve(claims, hold(0.2), NOW, check=False) is None  # a downgrade
    assert await one.spent(["total"], NOW) == [pytest.approx((1.7, 1.7))]


async def test_a_hold_its_process_never_settles_lapses(
    ledgers: tuple[RedisLedger, RedisLedger],
) -> None:
    one, two = ledgers
    claims = [("total", DOLLAR_A_DAY)]
    assert await one.reserve(claims, hold(2.0, ttl_s=30), NOW, check=True) is None
    assert await two.reserve(claims, hold(0.1), NOW + 10, check=True) == [(2.0, 2.0)]
    assert await two.reserve(claims, hold(0.1), NOW + 31, check=True) is None
    assert await one.spent(["total"], NOW + 31) == [pytest.approx((0.1, 0.1))]


async def test_every_scope_must_have_room_and_all_are_held_together(
    ledgers: tuple[RedisLedger, RedisLedger],
) -> None:
    one, _ = ledgers
    claims = [("total", BudgetLimit(usd_per_month=10.0)), ("key:abc", DOLLAR_A_DAY)]
    await one.add(["key:abc"], 1.0, NOW)
    assert await one.reserve(claims, hold(0.5, ("total", "key:abc")), NOW, check=True) == [
        (0.0, 0.0),
        (1.0, 1.0),
    ]
    assert await one.spent(["total"], NOW) == [(0.0, 0.0)]  # refused: nothing held anywhere


async def test_memory_ledger_holds_and_settles_like_redis() -> None:
    ledger = MemoryLedger()
    claims = [("total", DOLLAR_A_DAY)]
    first = hold(0.7)
    assert await ledger.reserve(claims, first, NOW, check=True) is None
    assert await ledger.reserve(claims, hold(0.4), NOW, check=True) is None
    assert await ledger.reserve(claims, hold(0.1), NOW, check=True) == [(1.1, 1.1)]
    await ledger.settle(first, 0.2, NOW)
    assert await ledger.spent(["total"], NOW) == [pytest.approx((0.6, 0.6))]


def test_breaker_lets_one_probe_through_per_cool_down() -> None:
    clock = [100.0]
    breaker = Breaker("test", logging.getLogger("test"), 1.0, lambda: clock[0])
    assert breaker.allows()
    breaker.failed(OSError("down"))
    assert not breaker.allows()
    clock[0] += 1.0
    assert breaker.allows()  # the probe
    assert not breaker.allows()  # everyone else, while it runs
    breaker.failed(OSError("still down"))
    clock[0] += 0.5
    assert not breaker.allows()
    clock[0] += 0.5
    assert breaker.allows()
    breaker.succeeded()
    assert breaker.allows() and breaker.allows()


async def test_a_hung_redis_costs_one_short_timeout_a_second(own_redis: RedisServer) -> None:
    store = Store(connect(own_redis.url, TIMEOUT_S))
    ledger = RedisLedger(store)
    await ledger.spent(["total"], NOW)  # connected
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    slow = 0
    calls = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            # waves of concurrent requests, as a busy process sees them
            began = time.monotonic()
            await asyncio.gather(*(ledger.spent(["total"], NOW) for _ in range(10)))
            calls += 10
            if time.monotonic() - began >= TIMEOUT_S * 0.8:
                slow += 1
            await asyncio.sleep(0.02)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    # the first wave meets the hang; after it only one probe a second waits
    assert calls >= 100
    assert slow <= 4, slow
    await ledger.aclose()


async def test_spend_during_a_hang_is_reconciled_once_when_redis_resumes(
    ledgers: tuple[RedisLedger, RedisLedger], own_redis: RedisServer
) -> None:
    one, two = ledgers
    claims = [("total", DOLLAR_A_DAY)]
    await one.add(["total"], 0.9, NOW)
    in_flight = hold(0.05)
    assert await one.reserve(claims, in_flight, NOW, check=True) is None
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        # the settle is sent and hangs: Redis runs it when it resumes, or not; either way once
        await one.settle(in_flight, 0.04, NOW)
        # this process's view: the spend it read plus what it spent since
        assert await one.spent(["total"], NOW) == [pytest.approx((0.94, 0.94))]
        assert await one.reserve(claims, hold(0.03), NOW, check=True) is None  # held here
        await one.add(["total"], 0.1, NOW)
        refused = await one.reserve(claims, hold(0.1), NOW, check=True)
        assert refused == [pytest.approx((1.07, 1.07))]  # a spent budget stays spent
        assert not one.shared
        later = hold(0.02)
        assert await one.reserve(claims, later, NOW, check=False) is None
        await one.settle(later, 0.02, NOW)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    await asyncio.sleep(1.1)  # the breaker's cool-down
    # the next call reconciles: 0.9 before, 0.04 + 0.02 + 0.1 during; the open hold stays here
    assert await one.spent(["total"], NOW) == [pytest.approx((1.09, 1.09))]
    assert one.shared
    assert await two.spent(["total"], NOW) == [pytest.approx((1.06, 1.06))]
    value = redis.Redis.from_url(own_redis.url).get("flashpro:v1:spend:total:d:20270115")
    assert float(value or 0) == pytest.approx(1.06)


async def test_store_reports_a_skipped_call_apart_from_a_failed_one() -> None:
    store = Store(connect(f"redis://127.0.0.1:{free_port()}/0", TIMEOUT_S))  # nothing listens

    async def ping(client: object) -> object:
        return await store.client.ping()

    with pytest.raises(StoreDown) as failed:
        await store.call(ping)
    assert failed.value.attempted
    with pytest.raises(StoreDown) as skipped:
        await store.call(ping)
    assert not skipped.value.attempted
    await store.aclose()
