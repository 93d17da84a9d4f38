"""Live routing state at the edges: who is calling, what they and everyone have spent, the recent
strong-tier share, learned latency and conversation tiers. The ledger and share window, in
process or in Redis (shared by every flashpro process), are router/state/ledger.py and share.py."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from router.errors import InvalidRequest
from router.routing.budget import Hold, expected_cost, hold_ttl_s
from router.routing.callers import Caller, bearer_digest, key_digest
from router.routing.constrain import RoutingState, Spent
from router.routing.cost import Usage
from router.routing.decide import decide
from router.routing.decision import Decision, facts_of
from router.routing.latency import LatencyLearner
from router.routing.limits import BudgetLimit
from router.routing.policy import Policy
from router.routing.routed import Routed
from router.schemas import ChatRequest
from router.state.calibration import LiveCalibration, RedisScoreWindow
from router.state.ledger import Ledger, MemoryLedger, RedisLedger
from router.state.share import MemoryShareWindow, RedisShareWindow, ShareWindow
from router.state.store import Store, open_store

LATENCY_HEADER = "x-flashpro-max-latency-ms"
log = logging.getLogger("flashpro.controls")


def group_of(policy: Policy, key: str | None, environ: Mapping[str, str]) -> str | None:
    if key is None:
        return None
    if key in policy.keys:
        return policy.keys[key]
    for env_name, group in policy.key_env.items():
        secret = environ.get(env_name)
        if secret and key_digest(secret) == key:
            return group
    return None


def conversation_of(request: ChatRequest, key: str | None) -> str | None:
    """A multi-turn conversation's id: a hash of the caller and its opening messages (the prefix
    DeepSeek caches). Single-turn requests have none."""
    if not any(m.role == "assistant" for m in request.messages):
        return None
    opening = [m.model_dump_json(include={"role", "content"}) for m in request.messages[:2]]
    return hashlib.sha256("\0".join([key or "", *opening]).encode()).hexdigest()[:32]


def caller_of(
    policy: Policy, request: ChatRequest, headers: Mapping[str, str], environ: Mapping[str, str]
) -> Caller:
    key = bearer_digest(headers.get("authorization"))
    raw = headers.get(LATENCY_HEADER)
    latency: float | None = None
    if raw is not None:
        try:
            latency = float(raw)
        except ValueError:
            latency = -1.0
        if not latency > 0:
            raise InvalidRequest(f"{LATENCY_HEADER} must be a positive number of milliseconds.")
    return Caller(
        key=key,
        group=group_of(policy, key, environ),
        conversation=conversation_of(request, key),
        max_latency_ms=latency,
        max_tokens=request.output_limit(),
    )


def budget_scopes(policy: Policy, caller: Caller) -> list[tuple[str, BudgetLimit]]:
    """(ledger scope, limit) for every budget that applies to the caller."""
    scopes: list[tuple[str, BudgetLimit]] = []
    budgets = policy.budgets
    if budgets is not None and budgets.total is not None:
        scopes.append(("total", budgets.total))
    if budgets is not None and budgets.per_key is not None and caller.key is not None:
        scopes.append((f"key:{caller.key}", budgets.per_key))
    group = policy.groups.get(caller.group or "")
    if group is not None and group.budget is not None:
        scopes.append((f"group:{caller.group}", group.budget))
    return scopes


class AffinityMemory:
    """Conversation id -> the tier that served it last (LRU, this process)."""

    def __init__(self) -> None:
        self._tiers: OrderedDict[str, str] = OrderedDict()

    def get(self, conversation: str) -> str | None:
        return self._tiers.get(conversation)

    def put(self, conversation: str, tier: str, capacity: int) -> None:
        self._tiers[conversation] = tier
        self._tiers.move_to_end(conversation)
        while len(self._tiers) > capacity:
            self._tiers.popitem(last=False)


@dataclass
class Controls:
    """The live-limit machinery a request goes through: state before deciding, records after."""

    ledger: Ledger = field(default_factory=MemoryLedger)
    shares: ShareWindow = field(default_factory=MemoryShareWindow)
    latency: LatencyLearner = field(default_factory=LatencyLearner)
    affinity: AffinityMemory = field(default_factory=AffinityMemory)
    calibration: LiveCalibration = field(default_factory=LiveCalibration)
    environ: Mapping[str, str] = field(default_factory=dict)
    _open: dict[str, float] = field(default_factory=dict)  # unsettled hold -> expires at

    def now(self) -> float:
        return time.time()

    async def state_for(self, policy: Policy, caller: Caller) -> RoutingState:
        now = self.now()
        scopes = budget_scopes(policy, caller)
        spent: tuple[Spent, ...] = ()
        if scopes:
            amounts = await self.ledger.spent([scope for scope, _ in scopes], now)
            spent = self._spent(scopes, amounts)
        share = None
        if policy.share_cap is not None:
            share = await self.shares.share(policy.share_cap.window_s, now)
        affinity = None
        if policy.affinity is not None and policy.affinity.enabled and caller.conversation:
            affinity = self.affinity.get(caller.conversation)
        thresholds = await self.calibration.thresholds(policy)
        return RoutingState(
            spent=spent,
            max_latency_ms=caller.max_latency_ms,
            max_tokens=caller.max_tokens,
            profiles=self.latency.profiles() if policy.learn_latency else {},
            strong_share=share,
            group=caller.group,
            affinity_tier=affinity,
            now=now,
            thresholds=thresholds,
        )

    def _spent(
        self, scopes: list[tuple[str, BudgetLimit]], amounts: list[tuple[float, float]]
    ) -> tuple[Spent, ...]:
        shared = self.ledger.shared
        return tuple(
            Spent(scope, limit, day, month, shared)
            for (scope, limit), (day, month) in zip(scopes, amounts, strict=True)
        )

    async def hold(
        self, policy: Policy, caller: Caller, usd: float, check: bool = True
    ) -> Hold | tuple[Spent, ...] | None:
        """Hold `usd` against the caller's budgets until the answer is charged: the hold, or
        None when no budget applies. With `check`, a budget already spent (holds in flight
        included) refuses instead, with the spend that refused it (atomic across processes)."""
        scopes = budget_scopes(policy, caller)
        if not scopes:
            return None
        now = self.now()
        hold = Hold(uuid.uuid4().hex, tuple(s for s, _ in scopes), usd, now + hold_ttl_s(policy))
        seen = await self.ledger.reserve(scopes, hold, now, check)
        if seen is not None:
            return self._spent(scopes, seen)
        if len(self._open) > 10_000:
            self._open = {t: at for t, at in self._open.items() if at > now}
        self._open[hold.token] = hold.expires_at
        return hold

    async def reserve(self, routed: Routed, state: RoutingState) -> Routed:
        """The routed request holding its expected cost against the caller's budgets until it
        is charged. The check and the hold are one atomic step across processes
        (router/state/ledger.py): a budget taken meanwhile by requests in flight routes the
        request again under the spend that refused it (reject: 429; downgrade: the downgrade
        tier, held without a check)."""
        routing = routed.routing
        if not state.spent or routing is None:
            return routed
        policy, caller, prompt = routing.policy, routed.caller, routed.assessment.prompt_tokens

        def cost(decision: Decision) -> float:
            return expected_cost(policy, decision.tier, prompt, caller.max_tokens, self.now())

        check = not routed.decision.rule.startswith("budget:")  # a downgrade is served anyway
        held = await self.hold(policy, caller, cost(routed.decision), check)
        if isinstance(held, tuple):
            facts = facts_of(routed.request, routed.headers, prompt)
            later = replace(state, spent=held)
            decision = decide(policy, routing.thresholds, facts, routed.assessment, later)
            routed = replace(routed, decision=decision)  # decide raised if the budget rejects
            held = await self.hold(policy, caller, cost(decision), check=False)
        return replace(routed, hold=held) if isinstance(held, Hold) else routed

    @asynccontextmanager
    async def holding(self, hold: Hold | None, keep: bool = False) -> AsyncIterator[None]:
        """Give `hold` back if the block fails, or when it ends without charging it (unless
        `keep`: a stream that opened is charged when it ends)."""
        try:
            yield
        except BaseException:
            await self.release(hold)
            raise
        if not keep:
            await self.release(hold)

    async def release(self, hold: Hold | None) -> None:
        """Give back the hold of a request that was not charged (failed, or a cache hit)."""
        if hold is not None and self._open.pop(hold.token, None) is not None:
            await self.ledger.release(hold, self.now())

    async def admitted(self, policy: Policy, caller: Caller, decision: Decision) -> None:
        """Count a routed request toward the share window and its alias's live calibration,
        and remember its conversation."""
        cap = policy.share_cap
        if cap is not None and decision.alias is not None and cap.tier in policy.tiers:
            strong = policy.rank(decision.tier) >= policy.rank(cap.tier)
            await self.shares.add(strong, cap.window_s, self.now())
        if policy.affinity is not None and caller.conversation:
            self.affinity.put(caller.conversation, decision.tier, policy.affinity.max_conversations)
        await self.calibration.seen(policy, decision.alias, decision.score, decision.tier)

    async def answered(
        self,
        policy: Policy,
        caller: Caller,
        decision: Decision,
        usage: Usage,
        cost_usd: float,
        total_ms: float | None,
        ttft_ms: float | None = None,
        hold: Hold | None = None,
    ) -> None:
        """Record what an answer cost in place of its hold, and how fast its tier was
        (`total_ms` None: an answer cut short, which says nothing about its tier's speed)."""
        if hold is not None and self._open.pop(hold.token, None) is not None:
            await self.ledger.settle(hold, cost_usd, self.now())
        else:
            scopes = [scope for scope, _ in budget_scopes(policy, caller)]
            if scopes and cost_usd > 0:
                await self.ledger.add(scopes, cost_usd, self.now())
        tier = policy.tiers.get(decision.tier)
        if policy.learn_latency and tier is not None and total_ms is not None:
            self.latency.observe(
                decision.tier,
                tier,
                policy.latency_ema_alpha,
                total_ms=total_ms,
                tokens=usage.completion_tokens,
                ttft_ms=ttft_ms,
            )

    async def aclose(self) -> None:
        await self.ledger.aclose()


def open_controls(
    redis: str | Store | None, environ: Mapping[str, str], namespace: str = ""
) -> Controls:
    """Redis-backed ledger, share window and live-calibration window when Redis is configured
    (a URL, or the store the rate limiter shares), else in-process ones. `namespace` (the
    upstream set, router/routing/routed.py) keeps each upstream's spend and share apart in a
    shared Redis."""
    shared = open_store(redis) if isinstance(redis, str) else redis
    if shared is None:
        return Controls(environ=environ)
    return Controls(
        ledger=RedisLedger(shared, namespace=namespace),
        shares=RedisShareWindow(shared, namespace=namespace),
        calibration=LiveCalibration(RedisScoreWindow(shared, namespace=namespace)),
        environ=environ,
    )
