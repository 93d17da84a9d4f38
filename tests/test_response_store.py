"""Stored responses: per caller, bounded in time and size, in memory or in Redis."""

from __future__ import annotations

from router.state.cache import MemoryCache
from router.state.responses import (
    ResponseStore,
    StoredResponse,
    new_response_id,
    open_response_store,
)
from tests.conftest import RedisServer


def stored(response_id: str, size: int = 10) -> StoredResponse:
    items = [{"type": "message", "role": "user", "content": "x" * size}]
    return StoredResponse({"id": response_id, "object": "response"}, items)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_response_ids_are_fresh() -> None:
    ids = {new_response_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("resp_") and len(i) == 53 for i in ids)


async def test_a_response_is_read_back_by_its_caller_only() -> None:
    store = ResponseStore.in_memory()
    assert await store.put("key:alice", stored("resp_1"))
    back = await store.get("key:alice", "resp_1")
    assert back == stored("resp_1")
    assert await store.get("key:bob", "resp_1") is None
    assert await store.get("key:alice", "resp_2") is None


async def test_responses_expire_after_the_ttl() -> None:
    clock = Clock()
    store = ResponseStore(MemoryCache(clock=clock), ttl_s=60)
    await store.put("anonymous", stored("resp_1"))
    clock.now = 59
    assert await store.get("anonymous", "resp_1") is not None
    clock.now = 61
    assert await store.get("anonymous", "resp_1") is None


async def test_an_entry_over_the_size_bound_is_not_kept() -> None:
    store = ResponseStore.in_memory(max_entry_bytes=1000)
    assert not await store.put("anonymous", stored("resp_big", size=2000))
    assert await store.get("anonymous", "resp_big") is None
    assert await store.put("anonymous", stored("resp_small", size=100))


async def test_memory_is_bounded_oldest_out_first() -> None:
    store = ResponseStore.in_memory(max_entries=2)
    for name in ("resp_a", "resp_b", "resp_c"):
        await store.put("anonymous", stored(name))
    assert await store.get("anonymous", "resp_a") is None
    assert await store.get("anonymous", "resp_c") is not None


async def test_an_unreadable_record_reads_as_unknown() -> None:
    backend = MemoryCache()
    store = ResponseStore(backend)
    await backend.put(store.key("anonymous", "resp_x"), b"{not json", 60)
    assert await store.get("anonymous", "resp_x") is None
    await backend.put(store.key("anonymous", "resp_y"), b'{"response": 1, "items": []}', 60)
    assert await store.get("anonymous", "resp_y") is None


async def test_redis_shares_responses_between_stores(redis_server: RedisServer) -> None:
    one = open_response_store(redis_server.url, ttl_s=30)
    other = open_response_store(redis_server.url, ttl_s=30)
    try:
        await one.put("key:alice", stored("resp_shared"))
        assert await other.get("key:alice", "resp_shared") == stored("resp_shared")
        assert await other.get("key:bob", "resp_shared") is None
    finally:
        await one.aclose()
        await other.aclose()
