"""Shadow comparisons: after a client has its whole answer, a sampled request is also answered
by the other tier of its compared pair and a judge tier compares the two answers, twice with
their order swapped; the outcome becomes a label for `flashpro learn`. Does I/O in background
tasks, never on the client's path.

`offer` is called once the answer is sent (a stream: once it completed and was assembled). It
only draws the sample and starts a task, bounded by `learning.max_in_flight` per process
(beyond it the comparison is skipped and counted). The task takes a slot of the shared rate
(`max_per_minute`) and checks the shared daily budget (router/state/labels.py), asks the other
tier the same request (one attempt: no retry, no fallback; the tier's own deadlines and
`max_concurrency`; shaped for DeepSeek as every call is, through `pipeline.upstream_call`), then
the judge twice, and writes the label. Failures (an upstream error, the comparison's deadline
`timeout_s`, an unparseable verdict, the store down) are counted per reason and dropped; a
shutdown cancels pending comparisons (counted as cancelled).

What is never compared, because it cannot be judged fairly: cache hits (nothing was generated),
answers a fallback tier gave, requests a rule or a live limit decided (or pinned to a tier:
only the score's decisions are what a label can change), requests with tools (a tool call is no
answer to judge), images (the judge tier may not read them), `n` > 1, answers cut short or
empty. Every front door is offered: a Messages body is asked of the other tier as it is, in
Anthropic format (as the pipeline sends it), and the judge reads its chat view.

Spend: both calls are priced from the policy and counted in the shared daily learning spend
(`daily_budget_usd`), the `flashpro_learning_spend_usd` metric and the label; they are also
charged to the policy's `budgets.total` (real money; no key or group spent it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from router.errors import FlashproError
from router.formats import Assembler, format_of
from router.pipeline import Deps, price, slot, upstream_call
from router.routing.callers import Caller
from router.routing.constrain import retarget
from router.routing.decision import Decision
from router.routing.judge import Compared, Verdict, combine, judge_prompt, label_of, parse_verdict
from router.routing.learning import Learning, boundary, pair_for, sample_chance, sampled_aliases
from router.routing.routed import Routed, Routing
from router.schemas import ChatRequest
from router.state.cache import CacheStatus
from router.state.labels import LabelsDown
from router.upstream.base import Completion
from router.upstream.resilience import Trail

log = logging.getLogger("flashpro.learning")


class Failed(Exception):
    """A comparison that ends without a label; `reason` is the word it is counted under."""

    def __init__(self, reason: str, outcome: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


async def _assembled(
    assembler: Assembler, chunks: AsyncIterator[dict[str, Any]], whole: list[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for chunk in chunks:
            assembler.add(chunk)
            yield chunk
    finally:
        if isinstance(chunks, AsyncGenerator):  # the relay's own end (what a cut stream costs)
            await chunks.aclose()
    if assembler.finished:
        whole.append(assembler.body())


def unfit(routed: Routed, cache: CacheStatus, trail: Trail, body: dict[str, Any]) -> str | None:
    """Why an answered request cannot be compared fairly, or None when it can."""
    request, decision = routed.request, routed.decision
    checks = (
        (cache == "hit", "cache_hit"),
        (trail.fallback is not None, "fallback"),
        (decision.alias is None or not decision.rule.startswith("threshold:"), "rule"),
        (bool(request.tools), "tools"),
        (request.has_images(), "images"),
        ((request.n or 1) > 1, "n"),
        (answer_text(body) is None, "no_answer"),
    )
    return next((reason for failed, reason in checks if failed), None)


def answer_text(body: dict[str, Any]) -> str | None:
    """The text of a whole answer (chat: its only choice; Messages: its text blocks); None if
    it has none, calls a tool or was cut short."""
    if body.get("type") == "message":
        return _message_text(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if choices[0].get("finish_reason") not in ("stop", None) or not isinstance(message, dict):
        return None
    content = message.get("content")
    if message.get("tool_calls") or not isinstance(content, str) or not content.strip():
        return None
    return content


def _message_text(body: dict[str, Any]) -> str | None:
    blocks = body.get("content")
    if body.get("stop_reason") not in ("end_turn", "stop_sequence") or not isinstance(blocks, list):
        return None
    if any(not isinstance(b, dict) or b.get("type") == "tool_use" for b in blocks):
        return None
    text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    return text if text.strip() else None


@dataclass(frozen=True, slots=True)
class Job:
    """One sampled comparison."""

    routed: Routed
    routing: Routing
    learning: Learning
    served_text: str
    weak: str
    strong: str


class Shadows:
    """This process's shadow comparisons in flight, and the skips it counted."""

    def __init__(
        self,
        deps_of: Callable[[], Deps],
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._deps_of = deps_of
        self._draw = draw
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped: Counter[str] = Counter()  # this process's skips before sampling, by reason

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def watch(
        self, routed: Routed, chunks: AsyncIterator[dict[str, Any]], whole: list[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        """A stream as the client gets it; with learning on, also assembled on the side, and the
        answer put in `whole` once the stream ended whole (to `offer` after it is sent)."""
        routing = routed.routing or self._deps_of().live
        if routing.policy.learning is None:
            return chunks
        return _assembled(format_of(routed).assembler(), chunks, whole)

    def offer(self, routed: Routed, cache: CacheStatus, trail: Trail, body: dict[str, Any]) -> None:
        """A whole answer the client has: draw whether to compare it, and start that."""
        deps = self._deps_of()
        routing = routed.routing or deps.live
        learning = routing.policy.learning
        if learning is None:
            return
        decision, alias = routed.decision, routed.decision.alias
        if alias is None or alias not in sampled_aliases(learning, routing.policy.aliases):
            return
        tiers = list(routing.policy.tiers)
        pair = pair_for(learning, tiers, routing.policy.aliases[alias].default_tier)
        reason = unfit(routed, cache, trail, body)
        if reason is None and (pair is None or decision.tier not in pair):
            reason = "other_tier"
        if reason is not None or pair is None:
            self._skip(deps, reason or "other_tier")
            return
        if self._draw() >= self._chance(deps, routing, learning, decision, pair[1]):
            return
        if len(self._tasks) >= learning.max_in_flight:
            self._skip(deps, "busy")
            return
        text = answer_text(body) or ""
        job = Job(routed, routing, learning, text, pair[0], pair[1])
        task = asyncio.get_running_loop().create_task(self._run(deps, job))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("shadow comparison failed unexpectedly", exc_info=error)

    def _chance(
        self, deps: Deps, routing: Routing, learning: Learning, decision: Decision, strong: str
    ) -> float:
        alias = decision.alias or ""
        steps = deps.controls.calibration.current(alias) or routing.thresholds[alias]
        share_above = routing.classifier.share_above  # the classifier that scored the request
        return sample_chance(learning, decision.score, boundary(steps, strong), share_above)

    def _skip(self, deps: Deps, reason: str) -> None:
        self.skipped[reason] += 1
        deps.observer.metrics.comparison("skipped", reason)

    async def _run(self, deps: Deps, job: Job) -> None:
        labels, metrics = deps.labels, deps.observer.metrics
        try:
            async with asyncio.timeout(job.learning.timeout_s):
                label = await self._compare(deps, job)
            await labels.add(label, job.learning.retention_days, job.learning.max_labels)
        except Failed as failed:
            metrics.comparison(failed.outcome, failed.reason)
            await labels.count(f"{failed.outcome}:{failed.reason}")
            return
        except TimeoutError:
            metrics.comparison("failed", "timeout")
            await labels.count("failed:timeout")
            return
        except LabelsDown:
            metrics.comparison("failed", "store")
            await labels.count("failed:store")
            return
        except asyncio.CancelledError:
            metrics.comparison("cancelled", "shutdown")
            await asyncio.shield(labels.count("cancelled:shutdown"))
            raise
        metrics.comparison("labelled", "")
        await labels.count("labels")
        if label["agree"]:
            await labels.count("agree")

    async def _compare(self, deps: Deps, job: Job) -> dict[str, Any]:
        labels, learning, routed = deps.labels, job.learning, job.routed
        if not await labels.start(learning.max_per_minute):
            raise Failed("rate", "skipped")
        await self._within_budget(deps, learning)
        served = routed.decision.tier
        other = job.strong if served == job.weak else job.weak
        shadow = replace(
            routed,
            decision=retarget(job.routing.policy, routed.decision, other, "shadow", rule="shadow"),
        )
        completion = await self._ask(deps, shadow, "upstream")
        shadow_usd = await self._spent(deps, shadow, completion, "shadow")
        other_text = answer_text(completion.body)
        if other_text is None:
            raise Failed("no_answer")
        await self._within_budget(deps, learning)
        strong_text, weak_text = (
            (other_text, job.served_text) if other == job.strong else (job.served_text, other_text)
        )
        first = await self._judge(deps, job, strong_text, weak_text)  # strong shown first
        second = await self._judge(deps, job, weak_text, strong_text)  # and second
        outcome = combine(first[0], second[0])
        compared = Compared(
            routed.request_id,
            self._clock(),
            routed.decision.alias or "",
            job.routing.classifier_version,
            routed.decision.score,
            served,
            job.weak,
            job.strong,
        )
        cost = {"shadow": shadow_usd, "judge": first[1] + second[1]}
        return label_of(compared, outcome, cost, routed.request, learning.store_prompts)

    async def _within_budget(self, deps: Deps, learning: Learning) -> None:
        if await deps.labels.spent_today() >= learning.daily_budget_usd:
            raise Failed("budget", "skipped")

    async def _judge(
        self, deps: Deps, job: Job, answer_a: str, answer_b: str
    ) -> tuple[Verdict, float]:
        """One judgement of the two answers in this order: its verdict and what it cost."""
        learning, routed = job.learning, job.routed
        prompt = judge_prompt(routed.request, answer_a, answer_b, learning.max_answer_chars)
        request = ChatRequest(
            model=learning.judge_tier, messages=[{"role": "user", "content": prompt}]
        )
        decision = retarget(
            job.routing.policy, routed.decision, learning.judge_tier, "judge", rule="judge"
        )
        judging = Routed(request, routed.assessment, decision, job.routing, Caller())
        completion = await self._ask(deps, judging, "judge")
        usd = await self._spent(deps, judging, completion, "judge")
        verdict = parse_verdict(answer_text(completion.body) or "")
        if verdict is None:
            raise Failed("verdict")
        return verdict, usd

    async def _ask(self, deps: Deps, routed: Routed, what: str) -> Completion:
        """One upstream call, no retry and no fallback, under the tier's max_concurrency."""
        try:
            release = await slot(deps, routed)
            try:
                return await deps.upstream.complete(await upstream_call(deps, routed))
            finally:
                release()
        except FlashproError as exc:
            log.info("shadow comparison: %s call failed: %s", what, exc.message)
            raise Failed(what) from exc

    async def _spent(self, deps: Deps, routed: Routed, completion: Completion, kind: str) -> float:
        """Price a call, count it in the learning spend and charge it to `budgets.total`."""
        usd = price(deps, routed.decision, completion.usage, routed.routing)
        deps.observer.metrics.learning_spent(kind, usd)
        await deps.labels.spend(kind, usd)
        await deps.labels.count(f"{kind}_usd", usd)
        policy = (routed.routing or deps.live).policy
        await deps.controls.answered(policy, Caller(), routed.decision, completion.usage, usd, None)
        return usd

    async def report(self, deps: Deps) -> dict[str, Any]:
        """The learning figures of /v1/stats: labels collected (in all and in the last 24 h),
        today's spend against the daily budget, how often the two swapped judgements agree,
        and comparisons that failed or were skipped, by reason."""
        learning = deps.live.policy.learning
        totals = await deps.labels.totals()
        labels = int(totals.get("labels", 0))
        skipped = Counter(self.skipped)
        by_outcome: dict[str, dict[str, int]] = {"failed": {}, "skipped": {}, "cancelled": {}}
        for field, count in totals.items():
            outcome, _, reason = field.partition(":")
            if outcome in by_outcome and reason:
                by_outcome[outcome][reason] = by_outcome[outcome].get(reason, 0) + int(count)
        for reason, count in skipped.items():
            by_outcome["skipped"][reason] = by_outcome["skipped"].get(reason, 0) + count
        return {
            "enabled": learning is not None,
            "labels": labels,
            "labels_24h": await deps.labels.recent(self._clock() - 86_400),
            "agreement": totals.get("agree", 0) / labels if labels else None,
            "spend_today_usd": {
                "shadow": await deps.labels.spent_today("shadow"),
                "judge": await deps.labels.spent_today("judge"),
            },
            "daily_budget_usd": learning.daily_budget_usd if learning is not None else None,
            "spend_usd": {
                "shadow": totals.get("shadow_usd", 0.0),
                "judge": totals.get("judge_usd", 0.0),
            },
            "in_flight": self.in_flight,
            **by_outcome,
        }

    async def aclose(self) -> None:
        """Cancel the comparisons in flight (a shutdown): each is counted as cancelled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
