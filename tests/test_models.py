"""The model store (memory and Redis) and the classifier reload every process runs from it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import redis

from router.http.reload import ModelReloader, hot_reload
from router.routing.classify import (
    DifficultyClassifier,
    Head,
    classifier_version,
    load_versioned,
)
from router.routing.policy import load_policy
from router.routing.routed import Routing, RoutingHolder
from router.schemas import ChatRequest
from router.state.models import HISTORY, MemoryModelStore, ModelStore, RedisModelStore
from router.state.store import Store, connect
from tests.conftest import ROOT, RedisServer

QUESTION = ChatRequest(model="auto", messages=[{"role": "user", "content": "Tell me a joke."}])


def db_url(server: RedisServer) -> str:
    return server.url.rsplit("/", 1)[0] + "/12"


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[ModelStore]:
    if request.param == "memory":
        yield MemoryModelStore()
        return
    redis.Redis.from_url(db_url(redis_server)).flushdb()
    shared = RedisModelStore(Store(connect(db_url(redis_server), 5.0)))
    yield shared
    await shared.aclose()


def shifted(by: float) -> tuple[DifficultyClassifier, bytes, str]:
    """The shipped classifier with its gain bias moved: another model, other scores."""
    shipped = load_versioned()[0]
    gain = Head(shipped.gain.weights, shipped.gain.bias + by)
    model = DifficultyClassifier(
        shipped.difficulty, gain, shipped.blend, shipped.calibration, shipped.reference
    )
    data = model.to_bytes()
    return model, data, classifier_version(data, "learned")


async def test_promotions_stack_and_rollback_pops_back_to_none(store: ModelStore) -> None:
    assert await store.live() is None and await store.rollback() is None
    _, first, v1 = shifted(1.0)
    _, second, v2 = shifted(2.0)
    await store.promote(v1, first, {"n": 1})
    await store.promote(v2, second, {"n": 2})
    assert await store.live() == v2 and await store.history() == [v2, v1]
    assert await store.blob(v1) == first and await store.report(v2) == {"n": 2}
    assert await store.rollback() == (v2, v1)
    assert await store.live() == v1
    assert await store.rollback() == (v1, None)
    assert await store.live() is None and await store.rollback() is None


async def test_history_is_bounded_and_old_blobs_go(store: ModelStore) -> None:
    versions = [f"learned-{i:012d}" for i in range(HISTORY + 3)]
    for i, version in enumerate(versions):
        await store.promote(version, b"x%d" % i, {"i": i})
    assert await store.history() == versions[::-1][:HISTORY]
    assert await store.blob(versions[0]) is None and await store.report(versions[2]) is None
    assert await store.blob(versions[-1]) == b"x%d" % (HISTORY + 2)


def live_holder() -> tuple[RoutingHolder, tuple[DifficultyClassifier, str]]:
    policy, version = load_policy(ROOT / "policies" / "default.yaml")
    shipped, shipped_version = load_versioned()
    holder = RoutingHolder(Routing.build(policy, version, shipped, {}, shipped_version))
    return holder, (shipped, shipped_version)


async def test_a_promoted_model_is_swapped_in_and_a_rollback_restores_the_start(
    store: ModelStore,
) -> None:
    holder, base = live_holder()
    reloader = ModelReloader(holder, store, base, {})
    assert not await reloader.check()
    before = holder.current.classifier.assess(QUESTION).score
    model, data, version = shifted(3.0)
    await store.promote(version, data, {})
    assert await reloader.check()
    assert holder.current.classifier_version == version
    assert holder.current.classifier.assess(QUESTION).score == model.assess(QUESTION).score
    assert model.assess(QUESTION).score != before
    assert holder.current.version == base_policy_version()  # the policy stays
    await store.rollback()
    assert await reloader.check()
    assert holder.current.classifier is base[0] and holder.current.classifier_version == base[1]


def base_policy_version() -> str:
    return load_policy(ROOT / "policies" / "default.yaml")[1]


async def test_a_corrupt_or_altered_blob_keeps_the_live_classifier(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    holder, base = live_holder()
    reloader = ModelReloader(holder, store, base, {})
    _, data, version = shifted(1.0)
    await store.promote(version, data[:-100] + b"\0" * 100, {})  # altered: the hash says so
    with caplog.at_level(logging.ERROR, "flashpro.reload"):
        assert not await reloader.check()
    assert holder.current.classifier_version == base[1]
    assert "do not match its version" in str(holder.model_error)
    garbage = b"not an artifact at all"
    await store.promote(classifier_version(garbage, "learned"), garbage, {})
    assert not await reloader.check()
    assert "not a classifier artifact" in str(holder.model_error)
    assert holder.current.classifier_version == base[1]
    await store.promote(version, data, {})  # a good one clears the error
    assert await reloader.check()
    assert holder.model_error is None and holder.current.classifier_version == version


async def test_an_unreachable_store_changes_nothing() -> None:
    holder, base = live_holder()
    dead = RedisModelStore(Store(connect("redis://127.0.0.1:9/0", 0.2)))
    reloader = ModelReloader(holder, dead, base, {})
    assert not await reloader.check()
    assert holder.current.classifier_version == base[1] and holder.model_error is None
    await dead.aclose()


async def test_hot_reload_loads_the_live_model_before_serving_without_a_policy_file() -> None:
    holder, base = live_holder()
    store = MemoryModelStore()
    _, data, version = shifted(2.0)
    await store.promote(version, data, {})
    reloader = ModelReloader(holder, store, base, {})

    def build(policy: object, version: str) -> Routing:
        raise AssertionError("no policy file is watched")

    async with hot_reload(holder, None, build, 0, reloader) as policies:  # type: ignore[arg-type]
        assert policies is None
        assert holder.current.classifier_version == version


async def test_one_promoter_at_a_time(store: ModelStore) -> None:
    assert await store.claim("a", 60)
    assert not await store.claim("b", 60)
    await store.release("b")  # not its lock: nothing changes
    assert not await store.claim("b", 60)
    await store.release("a")
    assert await store.claim("b", 60)
    await store.release("b")
