"""The policy's `learning:` section (shadow comparisons that label live traffic) and the chance
that a routed request is compared. Pure: no I/O.

A sampled request is also answered by the other tier of its compared pair, and a judge tier
compares the two answers (router/shadow.py). Sampling favours requests near the threshold
between the pair, where a label can change a decision: distance is measured in calibration
share (`Calibration.share_above` of the score vs of the threshold), so it means the same for
every alias whatever its score scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.routing.decision import Thresholds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Learning(_Strict):
    """Shadow comparisons: for a sampled share of routed requests, after the client has its
    answer, the other tier answers too and a judge tier compares the two answers (twice, the
    order swapped). The labels train `flashpro learn`. Absent: off. Costs real money: bounded
    by `max_per_minute` and `daily_budget_usd` across every flashpro process on one Redis."""

    sample_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Chance that a routed request right at the threshold is compared; farther "
        "away it falls towards `sample_rate * floor`.",
    )
    near_threshold: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Width of the favoured band, in calibration share: a request whose score's "
        "share of calibration traffic above it differs from the threshold's by d gets "
        "`sample_rate * max(floor, 1 - d / near_threshold)`.",
    )
    floor: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Relative chance far from the threshold (> 0: every region gets labels).",
    )
    max_per_minute: int = Field(
        default=10, ge=1, description="Comparisons started per minute, every process together."
    )
    daily_budget_usd: float = Field(
        default=1.0,
        gt=0,
        description="Shadow answers plus judgements per UTC day, every process together; once "
        "spent, no comparison starts until the next day (it is checked before each comparison "
        "and again before its judgements, so the comparisons in flight may pass it by their "
        "own cost). Also charged to `budgets.total`.",
    )
    judge_tier: str = Field(default="pro", description="The tier that judges the two answers.")
    compare: tuple[str, str] | None = Field(
        default=None,
        description="[weak, strong]: the two tiers compared. Default: each alias's default "
        "tier vs the next tier up. A request served by neither is not compared.",
    )
    store_prompts: bool = Field(
        default=False,
        description="Keep the request (messages) in each label. Off: labels hold hashed word "
        "features and counts only, never the text.",
    )
    retention_days: float = Field(default=30, gt=0, description="Labels older are deleted.")
    max_labels: int = Field(
        default=100_000, ge=1, description="Labels kept at most (the oldest go first)."
    )
    aliases: list[str] | None = Field(
        default=None,
        description="Aliases whose requests are sampled. Default: every alias (requests a rule "
        "decided, or pinned to a tier, are never compared).",
    )
    timeout_s: float = Field(
        default=600, gt=0, description="Deadline of one whole comparison (three calls), seconds."
    )
    max_in_flight: int = Field(
        default=4, ge=1, description="Comparisons running at once per process; more are skipped."
    )
    max_answer_chars: int = Field(
        default=20_000,
        ge=100,
        description="Each answer (and the request) is cut to this many characters in the "
        "judge's prompt.",
    )
    refit_hours: float | None = Field(
        default=None,
        gt=0,
        description="`flashpro serve` runs `flashpro learn` this often (hours) on the labels in "
        "REDIS_URL; a refit classifier is promoted only when it is better on held-out labels. "
        "Absent: never (run `flashpro learn` yourself).",
    )

    @model_validator(mode="after")
    def _two_tiers(self) -> Learning:
        if self.compare is not None and self.compare[0] == self.compare[1]:
            raise ValueError("'compare' needs two different tiers")
        return self


def learning_problems(
    learning: Learning | None, tiers: Sequence[str], aliases: Sequence[str]
) -> Iterator[str]:
    """Cross-reference errors of the `learning:` section, each with its YAML path."""
    if learning is None:
        return
    known = ", ".join(tiers)
    if learning.judge_tier not in tiers:
        yield f"learning.judge_tier: unknown tier '{learning.judge_tier}' (tiers: {known})"
    if learning.compare is not None:
        for i, tier in enumerate(learning.compare):
            if tier not in tiers:
                yield f"learning.compare[{i}]: unknown tier '{tier}' (tiers: {known})"
        weak, strong = learning.compare
        if weak in tiers and strong in tiers and tiers.index(weak) > tiers.index(strong):
            yield f"learning.compare: '{weak}' is above '{strong}' (give [weak, strong])"
    for i, alias in enumerate(learning.aliases or []):
        if alias not in aliases:
            yield f"learning.aliases[{i}]: unknown alias '{alias}' (aliases: {', '.join(aliases)})"


def pair_for(learning: Learning, tiers: Sequence[str], default_tier: str) -> tuple[str, str] | None:
    """The (weak, strong) tiers compared for an alias: `compare`, else its default tier and the
    next one up (None when the default is the top tier)."""
    if learning.compare is not None:
        return learning.compare
    rank = tiers.index(default_tier)
    return (default_tier, tiers[rank + 1]) if rank + 1 < len(tiers) else None


def boundary(steps: Thresholds, strong: str) -> float | None:
    """The score at which the alias starts sending requests to `strong` (None: it never does)."""
    found = dict(steps.steps).get(strong)
    return found if found is not None and math.isfinite(found) else None


def sample_chance(
    learning: Learning,
    score: float,
    threshold: float | None,
    share_above: Callable[[float], float],
) -> float:
    """The chance that a request routed on `score` is compared: `sample_rate` at the threshold,
    falling linearly with the distance in calibration share to `sample_rate * floor` at
    `near_threshold`; `sample_rate * floor` when the alias has no such threshold."""
    if threshold is None:
        return learning.sample_rate * learning.floor
    distance = abs(share_above(score) - share_above(threshold))
    weight = max(learning.floor, 1.0 - distance / learning.near_threshold)
    return learning.sample_rate * weight


def sampled_aliases(learning: Learning, aliases: Mapping[str, object]) -> frozenset[str]:
    """The aliases whose requests may be compared."""
    return frozenset(learning.aliases if learning.aliases is not None else aliases)
