"""The one place the order lives: classify -> decide -> cache lookup -> (coalesce) -> upstream call
-> store -> respond. Does I/O through the injected cache and upstream."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from router.errors import (
    FlashproError,
    UpstreamAuthFailed,
    UpstreamBalanceExhausted,
    UpstreamError,
    UpstreamSaturated,
)
from router.formats import Assembler, format_of
from router.observe.observer import Observer
from router.observe.record import record_of
from router.routing.classify import Classifier
from router.routing.cost import Usage, cost_usd
from router.routing.decision import Decision
from router.routing.routed import Routed, Routing, RoutingHolder
from router.state.cache import (
    BYPASS,
    CachePlan,
    CacheStatus,
    Entry,
    ResponseCache,
    namespace_of,
    plan_for,
)
from router.state.controls import Controls
from router.state.labels import LabelStore, MemoryLabelStore
from router.state.models import MemoryModelStore, ModelStore
from router.state.ratelimit import RateLimiter, limits_for
from router.state.reasoning import ReasoningStore
from router.state.responses import ResponseStore
from router.upstream.base import Chunk, Completion, Upstream, UpstreamCall
from router.upstream.concurrency import Concurrency, Held
from router.upstream.messages import messages_call
from router.upstream.resilience import NO_TRAIL, Resilience, Trail
from router.upstream.shaping import shape, user_id_of

T = TypeVar("T")


@dataclass(frozen=True)
class Deps:
    """Everything a request needs, built once in the app's lifespan."""

    routing: Routing  # the routing at start-up (policy and classifier); `live` is the current
    upstream: Upstream
    memory: ReasoningStore  # reasoning of tool-call turns (Redis with REDIS_URL)
    api_base: str | None  # default upstream base URL for tiers that give none
    anthropic_api_base: str | None = None  # likewise for Anthropic-format (/v1/messages) calls
    cache: ResponseCache = field(default_factory=ResponseCache.in_memory)
    controls: Controls = field(default_factory=Controls)  # budgets, share window, latency
    rates: RateLimiter = field(default_factory=RateLimiter)  # per-key requests/tokens a minute
    resilience: Resilience = field(default_factory=Resilience)  # retries, fallbacks, breakers
    concurrency: Concurrency = field(default_factory=Concurrency)  # per-tier max_concurrency
    observer: Observer = field(default_factory=Observer)  # metrics, access log, decision log
    responses: ResponseStore = field(default_factory=ResponseStore.in_memory)  # /v1/responses
    labels: LabelStore = field(default_factory=MemoryLabelStore)  # shadow comparisons' labels
    models: ModelStore = field(default_factory=MemoryModelStore)  # promoted classifiers
    holder: RoutingHolder = field(default=None)  # type: ignore[assignment]  # set below

    def __post_init__(self) -> None:
        if self.holder is None:  # hot reload swaps the holder's routing, never `routing`
            object.__setattr__(self, "holder", RoutingHolder(self.routing))

    @property
    def live(self) -> Routing:
        """The routing new requests use (the latest valid policy and classifier)."""
        return self.holder.current

    @property
    def classifier(self) -> Classifier:
        """The live classifier (part of the live routing)."""
        return self.holder.current.classifier


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer; on a cache hit `decision` names the tier that produced it."""

    body: dict[str, Any]
    decision: Decision
    cost_usd: float
    cache: CacheStatus = "bypass"
    saved_usd: float = 0.0  # on a hit: what the answer cost when it was produced
    trail: Trail = NO_TRAIL  # upstream attempts and fallback


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """An opened stream: its first chunk already arrived, so the status is known to be 200."""

    decision: Decision
    chunks: AsyncIterator[dict[str, Any]]
    cache: CacheStatus = "bypass"
    saved_usd: float = 0.0
    trail: Trail = NO_TRAIL


def _routing(deps: Deps, routed: Routed) -> Routing:
    return routed.routing or deps.live


def cache_plan(deps: Deps, routed: Routed, headers: Mapping[str, str]) -> CachePlan:
    """Which cache entries may answer the routed request (answers of the same upstream only),
    and whether to store its answer."""
    routing = _routing(deps, routed)
    upstreams = {t: routing.identity(t, deps.api_base) for t in routing.policy.tiers}
    digest = routed.anthropic.digest if routed.anthropic is not None else None
    tier = routed.decision.tier
    return plan_for(routing.policy, routed.request, tier, headers, upstreams, digest)


def _namespace(deps: Deps, routed: Routed) -> str:
    """The caller's namespace: its tenant or key hash (router/state/cache.py)."""
    tenants = _routing(deps, routed).policy.cache.tenants
    return namespace_of(routed.headers.get("authorization"), tenants)


async def upstream_call(deps: Deps, routed: Routed) -> UpstreamCall:
    """The call to the routed tier: reasoning of earlier tool-call turns restored, shaped to
    DeepSeek's rules (router/upstream/shaping.py), the caller's tenant hash as `user_id`; a
    Messages body goes as it is, in Anthropic format (router/upstream/messages.py)."""
    routing = _routing(deps, routed)
    name = routed.decision.tier
    tier = routing.policy.tiers[name]
    namespace = _namespace(deps, routed)
    key = routing.keys.get(tier.api_key_env)
    if routed.anthropic is not None:
        base = tier.api_base_anthropic or deps.anthropic_api_base
        return messages_call(tier, routed.anthropic, base, key, user_id_of(namespace))
    messages = await deps.memory.restore(namespace, routed.request.messages)
    dumped = [m.model_dump(exclude_none=True) for m in messages]
    call = UpstreamCall.to_tier(tier, dumped, routed.request.upstream_params(), deps.api_base, key)
    return shape(call, tier=name, vision=tier.vision, user_id=user_id_of(namespace))


async def slot(deps: Deps, routed: Routed) -> Callable[[], None]:
    """A place under the tier's `max_concurrency` (per account and model); its release."""
    routing, name = _routing(deps, routed), routed.decision.tier
    tier, metrics = routing.policy.tiers[name], deps.observer.metrics
    try:
        return await deps.concurrency.acquire(
            f"{routing.identity(name, deps.api_base)}:{tier.model}",
            tier.max_concurrency,
            tier.queue_ms / 1000,
            name,
            lambda in_flight: metrics.upstream_in_flight(tier.model_name, in_flight),
        )
    except UpstreamSaturated:
        metrics.tier_saturated(name)
        raise


def _named(deps: Deps, routed: Routed, exc: BaseException) -> BaseException:
    """An upstream refusal of flashpro's own account (402, refused key) counted, and a 402
    naming the account; any other failure as it is."""
    if not isinstance(exc, UpstreamBalanceExhausted | UpstreamAuthFailed):
        return exc
    name, balance = routed.decision.tier, isinstance(exc, UpstreamBalanceExhausted)
    deps.observer.metrics.account_error(name, "insufficient_balance" if balance else "auth")
    account = _routing(deps, routed).account(name, deps.api_base)
    return UpstreamBalanceExhausted.on(name, account) if balance else exc


def price(deps: Deps, decision: Decision, usage: Usage, routing: Routing | None = None) -> float:
    """What an answer cost, off-peak discount included."""
    policy = (routing or deps.live).policy
    return cost_usd(usage, policy.prices_at(decision.tier, datetime.now(UTC)))


async def _answered(
    deps: Deps,
    routed: Routed,
    usage: Usage,
    cost: float,
    started: float,
    first_at: float | None,
    cache: CacheStatus = "bypass",
) -> None:
    """Record the spend and the observed latency once an answer is complete."""
    observe(deps, routed, cache=cache, usage=usage, cost=cost, timing=(started, first_at))
    ttft_ms = (first_at - started) * 1000 if first_at is not None else None
    await _charge(deps, routed, usage, cost, (time.monotonic() - started) * 1000, ttft_ms)


async def _charge(
    deps: Deps,
    routed: Routed,
    usage: Usage,
    cost: float,
    total_ms: float | None,
    ttft_ms: float | None = None,
) -> None:
    """Charge the spend to the budgets and the tokens to the key's rates; learn the tier's
    latency unless `total_ms` is None (an answer cut short)."""
    policy = _routing(deps, routed).policy
    await deps.controls.answered(
        policy, routed.caller, routed.decision, usage, cost, total_ms, ttft_ms, routed.hold
    )
    tokens = usage.prompt_tokens + usage.completion_tokens
    await deps.rates.used(limits_for(policy, routed.caller.group), routed.caller.key, tokens)


Gone = Callable[[], bool]  # after a cancellation: did the client leave (else: a shutdown)?
Waiting = Callable[[], Awaitable[None]]  # the upstream said it is still queueing the request


def _client_left() -> bool:
    return True


async def complete(
    deps: Deps, routed: Routed, plan: CachePlan = BYPASS, gone: Gone = _client_left
) -> Answer:
    """A whole answer: from the cache if it has one, else from the upstream (coalesced)."""
    async with deps.controls.holding(routed.hold):  # settled by the charge, else given back
        if plan.read and (entry := await deps.cache.lookup(plan.keys)) is not None:
            return _cached(deps, routed, entry)
        if not plan.coalesce:
            return await _call(deps, routed, plan, gone)
        async with deps.cache.turn(plan) as entry:
            if entry is not None:
                return _cached(deps, routed, entry)
            return await _call(deps, routed, plan, gone)


async def _call(deps: Deps, routed: Routed, plan: CachePlan, gone: Gone) -> Answer:
    started = time.monotonic()

    async def call(attempt: Routed) -> Completion:
        release = await slot(deps, attempt)
        try:
            return await deps.upstream.complete(await upstream_call(deps, attempt))
        except FlashproError as exc:
            raise _named(deps, attempt, exc)  # noqa: B904 - the same error, or it renamed
        finally:
            release()

    try:
        completion, routed, trail = await resilient(deps, routed, call)
    except asyncio.CancelledError:
        await _abandoned(deps, routed, plan, gone)
        raise
    await deps.memory.remember(_namespace(deps, routed), completion.body)
    cost = price(deps, routed.decision, completion.usage, routed.routing)
    await _answered(deps, routed, completion.usage, cost, started, None, plan.status)
    await _store(deps, _replanned(deps, routed, plan, trail), routed, completion.body, cost)
    return Answer(completion.body, routed.decision, cost, plan.status, trail=trail)


async def resilient(
    deps: Deps, routed: Routed, call: Callable[[Routed], Awaitable[T]]
) -> tuple[T, Routed, Trail]:
    """The upstream call under the policy's retries, fallbacks and circuit breakers; returns
    the request as re-routed to the tier that answered (router/upstream/resilience.py)."""

    def to(decision: Decision) -> Routed:
        return routed if decision is routed.decision else replace(routed, decision=decision)

    async def attempt(decision: Decision) -> T:
        return await call(to(decision))

    policy = _routing(deps, routed).policy
    images = routed.request.has_images()
    value, decision, trail = await deps.resilience.call(
        policy, routed.decision, attempt, routed.caller.group, images
    )
    return value, to(decision), trail


def _replanned(deps: Deps, routed: Routed, plan: CachePlan, trail: Trail) -> CachePlan:
    """The plan for storing an answer: under the tier that produced it (a fallback tier's
    answer must not serve requests routed to the stronger tier that failed)."""
    if trail.fallback is None or not plan.write:
        return plan
    return cache_plan(deps, routed, routed.headers)


async def _store(
    deps: Deps, plan: CachePlan, routed: Routed, body: dict[str, Any], cost: float
) -> None:
    """Keep an answer that finished normally, if the plan writes."""
    if plan.write and format_of(routed).complete(body):
        decision = routed.decision
        await deps.cache.store(plan, Entry(body, decision.tier, decision.model, cost))


def _cached(deps: Deps, routed: Routed, entry: Entry) -> Answer:
    decision = _produced_by(routed.decision, entry)
    _observe_hit(deps, routed, entry, decision)
    return Answer(format_of(routed).fresh(entry.body), decision, 0.0, "hit", entry.cost_usd)


def _observe_hit(deps: Deps, routed: Routed, entry: Entry, decision: Decision) -> None:
    usage = format_of(routed).usage(entry.body)  # what the hit saved, at baseline prices
    observe(deps, routed, cache="hit", usage=usage, decision=decision)


def observe(
    deps: Deps,
    routed: Routed | None,
    *,
    request_id: str = "",
    status: int = 200,
    error: str | None = None,
    cache: CacheStatus = "bypass",
    usage: Usage | None = None,
    cost: float = 0.0,
    timing: tuple[float, float | None] | None = None,
    decision: Decision | None = None,
    api: str | None = None,
) -> None:
    """The one observation hook: a finished (or failed) request, as one record, to the metrics,
    the access log, the dashboard and the decision log (router/observe/observer.py). `api`
    names the front door of a request that failed before it was routed."""
    policy = _routing(deps, routed).policy if routed is not None else deps.live.policy
    record = record_of(
        policy,
        routed,
        request_id=request_id,
        status=status,
        error=error,
        cache=cache,
        usage=usage or Usage(),
        cost=cost,
        timing=timing,
        decision=decision,
        api=api,
    )
    deps.observer.request_done(record)


def _produced_by(decision: Decision, entry: Entry) -> Decision:
    """The decision as the headers report it: with the tier and model that produced the answer."""
    if entry.tier == decision.tier:
        return decision
    reason = f"{decision.reason}; cached answer from {entry.tier}"
    return replace(decision, tier=entry.tier, model=entry.model, reason=reason)


async def open_stream(
    deps: Deps,
    routed: Routed,
    plan: CachePlan = BYPASS,
    waiting: Waiting | None = None,
    gone: Gone = _client_left,
) -> StreamAnswer:
    """Replay a cached answer, or open the upstream stream and wait for its first chunk (so
    failures surface as a status, unless `waiting` committed the answer when the upstream said
    it was queueing the request). Streams are not coalesced: see router/state/cache.py."""
    if plan.read and (entry := await deps.cache.lookup(plan.keys)) is not None:
        await deps.controls.release(routed.hold)
        wire = format_of(routed)
        replay = _replay(wire.replay(wire.fresh(entry.body), routed))
        decision = _produced_by(routed.decision, entry)
        _observe_hit(deps, routed, entry, decision)
        return StreamAnswer(decision, replay, "hit", entry.cost_usd)
    started = time.monotonic()
    try:
        async with deps.controls.holding(routed.hold, keep=True):  # the stream's end settles it
            opening = await resilient(deps, routed, partial(_first_chunk, deps, waiting=waiting))
    except asyncio.CancelledError:
        await _abandoned(deps, routed, plan, gone)
        raise
    (first, chunks), routed, trail = opening
    store_plan = _replanned(deps, routed, plan, trail)
    relay = _relay(deps, routed, store_plan, first, chunks, (started, time.monotonic()), gone)
    return StreamAnswer(routed.decision, relay, plan.status, trail=trail)


async def _first_chunk(
    deps: Deps, routed: Routed, waiting: Waiting | None = None
) -> tuple[Chunk, AsyncIterator[Chunk]]:
    """Open the upstream stream and wait for its first chunk, so failures surface here (the
    upstream's keep-alives meanwhile go to `waiting`); the stream holds its concurrency slot
    until it ends."""
    release = await slot(deps, routed)
    chunks: AsyncIterator[Chunk] | None = None
    try:
        chunks = await deps.upstream.stream(await upstream_call(deps, routed))
        while (first := await anext(chunks)).keep_alive:
            if waiting is not None:
                await waiting()
    except BaseException as exc:
        release()
        if chunks is not None:
            await _close(chunks)
        if isinstance(exc, StopAsyncIteration):
            raise UpstreamError("The upstream ended the stream before sending anything.") from None
        raise _named(deps, routed, exc)  # noqa: B904
    return first, Held(chunks, release)


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _replay(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


async def _relay(
    deps: Deps,
    routed: Routed,
    plan: CachePlan,
    first: Chunk,
    rest: AsyncIterator[Chunk],
    timing: tuple[float, float] | None = None,
    gone: Gone = _client_left,
) -> AsyncIterator[dict[str, Any]]:
    """Relay chunks as the client's format has them, assembling the answer as it goes."""
    wire = format_of(routed)
    assembler = wire.assembler()
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            if not chunk.keep_alive:  # keep-alives are passed on only before the first chunk
                assembler.add(chunk.data)
                data = wire.for_client(chunk.data, routed)
                if data is not None:
                    yield data
            chunk = await anext(rest, None)
    finally:
        await _close(rest)
        if not assembler.finished:
            await _cut(deps, routed, plan, assembler, sys.exc_info()[1], gone)
    if assembler.finished:  # not after a client disconnect or an upstream drop
        body = assembler.body()
        await deps.memory.remember(_namespace(deps, routed), body)
        usage = wire.usage(body)
        cost = price(deps, routed.decision, usage, routed.routing)
        started, first_at = timing or (time.monotonic(), None)
        await _answered(deps, routed, usage, cost, started, first_at, plan.status)
        await _store(deps, plan, routed, body, cost)


async def _cut(
    deps: Deps,
    routed: Routed,
    plan: CachePlan,
    assembler: Assembler,
    cause: BaseException | None,
    gone: Gone = _client_left,
) -> None:
    """A stream that ended early still counts: the client left (499), the server shut down
    (503) or the upstream broke (502). DeepSeek bills what it generated, so the prompt and the
    tokens streamed so far (estimated at four characters a token, reasoning included) are
    priced and charged to the budgets and rates."""
    if isinstance(cause, GeneratorExit | asyncio.CancelledError):
        status, error = _stopped(gone)
    else:
        status, error = 502, "upstream_interrupted"
    usage = assembler.reported_usage() or _estimated(routed, assembler)
    cost = price(deps, routed.decision, usage, routed.routing)
    observe(deps, routed, status=status, error=error, cache=plan.status, usage=usage, cost=cost)
    await _charge(deps, routed, usage, cost, None)


def _stopped(gone: Gone) -> tuple[int, str]:
    """A cancelled request: the client left, or the server is shutting down."""
    return (499, "client_disconnected") if gone() else (503, "shutdown")


async def _abandoned(deps: Deps, routed: Routed, plan: CachePlan, gone: Gone) -> None:
    """The request was cancelled while the upstream worked on it (nothing streamed yet): it
    is charged as a stream cut at that point would be, the prompt (estimated) and no output."""
    status, error = _stopped(gone)
    usage = Usage(prompt_tokens=routed.assessment.prompt_tokens)
    cost = price(deps, routed.decision, usage, routed.routing)
    observe(deps, routed, status=status, error=error, cache=plan.status, usage=usage, cost=cost)
    await _charge(deps, routed, usage, cost, None)


def _estimated(routed: Routed, assembler: Assembler) -> Usage:
    produced, reasoning = assembler.produced_chars()
    return Usage(
        prompt_tokens=routed.assessment.prompt_tokens,
        completion_tokens=-(-produced // 4),
        reasoning_tokens=-(-reasoning // 4),
    )
