"""The label store: labels kept by time within retention and cap, running totals, and the
per-minute and daily-spend gates, in memory and shared through a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from router.state.labels import (
    LABELS_KEY,
    STATS_KEY,
    LabelsDown,
    LabelStore,
    MemoryLabelStore,
    RedisLabelStore,
)
from router.state.store import Breaker, Store, connect
from tests.conftest import RedisServer, free_port

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_764_460_800.0) -> None:  # a UTC midnight
        self.now = now

    def __call__(self) -> float:
        return self.now


def label(ts: float, name: str = "x") -> dict[str, Any]:
    return {"v": 1, "id": name, "ts": ts, "gain": 0.5}


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    await client.delete(LABELS_KEY, STATS_KEY, *await client.keys("flashpro:v1:rate:learning:*"))
    await client.aclose()
    yield redis_server.url


Make = Callable[[Clock], LabelStore]


def _memory(clock: Clock) -> LabelStore:
    return MemoryLabelStore(clock)


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    if request.param == "memory":
        return _memory
    url = request.getfixturevalue("redis_url")
    return lambda clock: RedisLabelStore(Store(connect(url)), clock)


async def test_labels_are_read_back_in_time_order_and_since_a_time(make: Make) -> None:
    clock = Clock()
    store = make(clock)
    for i in (3, 1, 2):
        await store.add(label(clock.now + i, f"l{i}"), 30, 100)
    assert [x["id"] for x in await store.labels()] == ["l1", "l2", "l3"]
    assert [x["id"] for x in await store.labels(since_ts=clock.now + 2)] == ["l2", "l3"]
    assert await store.recent(clock.now + 3) == 1
    await store.aclose()


async def test_old_labels_are_pruned_and_the_oldest_go_past_the_cap(make: Make) -> None:
    clock = Clock()
    store = make(clock)
    await store.add(label(clock.now - 3 * DAY, "old"), 30, 100)
    clock.now += 2 * DAY
    await store.add(label(clock.now, "new"), 4, 100)  # 'old' is now five days old
    assert [x["id"] for x in await store.labels()] == ["new"]
    for i in range(5):
        await store.add(label(clock.now + i, f"c{i}"), 4, 3)
    assert [x["id"] for x in await store.labels()] == ["c2", "c3", "c4"]
    await store.aclose()


async def test_totals_add_up(make: Make) -> None:
    store = make(Clock())
    await store.count("labels")
    await store.count("labels")
    await store.count("failed:verdict")
    await store.count("judge_usd", 0.25)
    assert await store.totals() == {"labels": 2, "failed:verdict": 1, "judge_usd": 0.25}
    await store.aclose()


async def test_rate_gate_lets_the_minutes_quota_through_then_the_next_minute(make: Make) -> None:
    clock = Clock()
    store = make(clock)
    assert [await store.start(2) for _ in range(4)] == [True, True, False, False]
    clock.now += 60
    assert await store.start(2)
    await store.aclose()


async def test_daily_spend_adds_up_per_kind_and_starts_over_the_next_day(make: Make) -> None:
    clock = Clock()
    store = make(clock)
    await store.spend("shadow", 0.0004)
    await store.spend("judge", 0.0011)
    await store.spend("judge", 0.0)
    assert await store.spent_today() == pytest.approx(0.0015)
    assert await store.spent_today("judge") == pytest.approx(0.0011)
    clock.now += DAY
    assert await store.spent_today() == 0
    await store.aclose()


async def test_two_processes_on_one_redis_share_labels_and_gates(redis_url: str) -> None:
    clock = Clock()
    one = RedisLabelStore(Store(connect(redis_url)), clock)
    two = RedisLabelStore(Store(connect(redis_url)), clock)
    assert [await one.start(3), await two.start(3), await one.start(3)] == [True] * 3
    assert not await two.start(3)
    await one.spend("judge", 0.5)
    assert await two.spent_today() == pytest.approx(0.5)
    await one.add(label(clock.now), 30, 10)
    await two.count("labels")
    assert len(await two.labels()) == 1 and (await one.totals())["labels"] == 1
    await one.aclose()
    await two.aclose()


async def test_labels_wait_in_memory_while_redis_is_down_and_go_with_the_next_write(
    redis_url: str,
) -> None:
    clock = Clock()
    shared = Store(connect(f"redis://127.0.0.1:{free_port()}/0"), logging.getLogger())
    store = RedisLabelStore(shared, clock)
    await store.add(label(clock.now, "a"), 30, 10)  # Redis down: kept, not raised
    assert store.pending == 1
    with pytest.raises(LabelsDown):
        await store.labels()
    await store.count("failed:judge")
    assert await store.totals() == {"failed:judge": 1}
    assert await store.start(1) and not await store.start(1)  # this process's own gate
    shared.client = connect(redis_url)  # Redis is back
    shared.breaker = Breaker("test", logging.getLogger(), cool_down_s=0.0)
    await store.add(label(clock.now + 1, "b"), 30, 10)
    assert store.pending == 0
    assert [row["id"] for row in await store.labels()] == ["a", "b"]
    await store.aclose()


async def test_past_its_buffer_or_at_shutdown_with_redis_down_a_label_is_lost_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("router.state.labels.PENDING_MAX", 2)
    store = RedisLabelStore(
        Store(connect(f"redis://127.0.0.1:{free_port()}/0"), logging.getLogger())
    )
    await store.add(label(1.0, "a"), 30, 10)
    await store.add(label(2.0, "b"), 30, 10)
    with pytest.raises(LabelsDown):
        await store.add(label(3.0, "c"), 30, 10)
    await store.aclose()  # still down: the two waiting are lost, and counted
    assert (await store.totals())["failed:store"] == 2
