"""The one place the order lives: classify -> decide -> call the upstream -> price the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.assemble import StreamAssembler
from router.classify import Assessment, Classifier
from router.cost import Usage, cost_usd
from router.decide import Decision, RequestFacts, Thresholds, decide, resolve_thresholds
from router.errors import UpstreamError
from router.policy import Policy
from router.reasoning import ReasoningMemory
from router.schemas import ChatRequest
from router.upstream import Chunk, Upstream, UpstreamCall


@dataclass(frozen=True)
class Routing:
    """The live policy bound to the classifier's calibration, and the upstream keys it names."""

    policy: Policy
    version: str
    thresholds: Mapping[str, Thresholds]
    keys: Mapping[str, str | None]  # api_key_env name -> key

    @classmethod
    def build(
        cls,
        policy: Policy,
        version: str,
        threshold_for_share: Callable[[float], float],
        environ: Mapping[str, str],
    ) -> Routing:
        keys = {tier.api_key_env: environ.get(tier.api_key_env) for tier in policy.tiers.values()}
        return cls(policy, version, resolve_thresholds(policy, threshold_for_share), keys)


@dataclass(frozen=True)
class Deps:
    """Everything a request needs, built once in the app's lifespan."""

    routing: Routing
    classifier: Classifier
    upstream: Upstream
    memory: ReasoningMemory
    api_base: str | None  # default upstream base URL for tiers that give none


@dataclass(frozen=True, slots=True)
class Routed:
    """A request with its routing decision."""

    request: ChatRequest
    assessment: Assessment
    decision: Decision


@dataclass(frozen=True, slots=True)
class Answer:
    body: dict[str, Any]
    decision: Decision
    cost_usd: float


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """An opened stream: its first chunk already arrived, so the status is known to be 200."""

    decision: Decision
    chunks: AsyncIterator[dict[str, Any]]


def facts_of(request: ChatRequest, headers: Mapping[str, str], prompt_tokens: int) -> RequestFacts:
    return RequestFacts(
        model=request.model,
        tools=bool(request.tools),
        json_output=request.wants_json(),
        stream=request.stream,
        prompt_tokens=prompt_tokens,
        headers=headers,
    )


def route(deps: Deps, request: ChatRequest, headers: Mapping[str, str]) -> Routed:
    """Classify and decide, without calling the upstream (also serves POST /v1/route)."""
    assessment = deps.classifier.assess(request)
    facts = facts_of(request, headers, assessment.prompt_tokens)
    routing = deps.routing
    decision = decide(routing.policy, routing.thresholds, facts, assessment)
    return Routed(request, assessment, decision)


def upstream_call(deps: Deps, routed: Routed) -> UpstreamCall:
    tier = deps.routing.policy.tiers[routed.decision.tier]
    messages = deps.memory.restore(routed.request.messages)
    return UpstreamCall(
        model=tier.model,
        messages=[m.model_dump(exclude_none=True) for m in messages],
        params=routed.request.upstream_params(),
        thinking=tier.thinking,
        reasoning_effort=tier.reasoning_effort,
        api_base=tier.api_base or deps.api_base,
        api_key=deps.routing.keys.get(tier.api_key_env),
        timeout_s=tier.timeout_s,
    )


def price(deps: Deps, decision: Decision, usage: Usage) -> float:
    return cost_usd(usage, deps.routing.policy.tiers[decision.tier].prices)


async def complete(deps: Deps, routed: Routed) -> Answer:
    completion = await deps.upstream.complete(upstream_call(deps, routed))
    deps.memory.remember(completion.body)
    return Answer(completion.body, routed.decision, price(deps, routed.decision, completion.usage))


async def open_stream(deps: Deps, routed: Routed) -> StreamAnswer:
    """Open the upstream stream and wait for its first chunk, so failures surface as a status."""
    chunks = await deps.upstream.stream(upstream_call(deps, routed))
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise UpstreamError("The upstream ended the stream before sending anything.") from None
    relay = _relay(deps, routed, first, chunks)
    return StreamAnswer(routed.decision, relay)


async def _relay(
    deps: Deps, routed: Routed, first: Chunk, rest: AsyncIterator[Chunk]
) -> AsyncIterator[dict[str, Any]]:
    """Relay chunks (usage only if the client asked), assembling the answer as it goes."""
    include_usage = routed.request.include_usage()
    assembler = StreamAssembler()
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            assembler.add(chunk.data)
            data = _for_client(chunk.data, include_usage)
            if data is not None:
                yield data
            chunk = await anext(rest, None)
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
    if assembler.finished:
        deps.memory.remember(assembler.body())


def _for_client(data: dict[str, Any], include_usage: bool) -> dict[str, Any] | None:
    if include_usage:
        return data
    if not data.get("choices"):
        return None  # a usage-only chunk the client did not ask for
    if "usage" in data:
        return {k: v for k, v in data.items() if k != "usage"}
    return data
