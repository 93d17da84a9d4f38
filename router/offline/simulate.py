"""`flashpro policy simulate`: replay a labelled data set through the policy's real decisions and
estimate share, cost, quality and latency per tier. `simulate` is pure (the classifier comes in);
`load_rows` and `render` do the I/O."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from router.offline.inputs import read_jsonl, row_error
from router.routing.classify import Classifier
from router.routing.decide import decide, live_thresholds
from router.routing.decision import RequestFacts, Thresholds
from router.routing.latency import expected_latency_ms, expected_tokens, profile_of
from router.routing.policy import Policy
from router.schemas import ChatRequest


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled prompt: did the strong (Pro) and the weak (Flash) model answer it right?"""

    prompt: str
    strong_correct: float
    weak_correct: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one strategy does over the data set."""

    name: str
    requests: int
    shares: dict[str, float]  # tier -> share of requests
    cost_per_1k_usd: float
    quality: float  # mean correctness
    latency_mean_ms: float
    latency_p95_ms: float


def load_rows(path: Path) -> list[Row]:
    """The labelled rows of a JSON Lines file; a row missing a field raises `InputError`."""
    rows = []
    for number, data in read_jsonl(path):
        try:
            rows.append(
                Row(
                    prompt=str(data["prompt"]),
                    strong_correct=float(data["strong_correct"]),
                    weak_correct=float(data["weak_correct"]),
                    source=str(data.get("source", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise row_error(f"{path}:{number}", exc) from None
    return rows


def simulate(
    policy: Policy,
    thresholds: dict[str, Thresholds],
    classifier: Classifier,
    rows: Sequence[Row],
    alias: str,
) -> list[Outcome]:
    """The policy beside all-cheapest-tier and all-Pro, over `rows` routed as `alias`.

    An alias with `calibration: live` is given the steps its live calibration settles on when
    `rows` are its traffic: the quantiles of their own scores (the fixed ones below WARMUP rows).
    """
    assessments = [
        classifier.assess(
            ChatRequest.model_validate(
                {"model": alias, "messages": [{"role": "user", "content": row.prompt}]}
            )
        )
        for row in rows
    ]
    spec = policy.aliases.get(alias)
    if spec is not None and spec.calibration == "live":
        settled = live_thresholds(policy, alias, [a.score for a in assessments])
        thresholds = {**thresholds, alias: settled or thresholds[alias]}
    chosen: list[tuple[str, int]] = []  # (tier, prompt tokens) per row
    for assessment in assessments:
        facts = RequestFacts(alias, prompt_tokens=assessment.prompt_tokens)
        decision = decide(policy, thresholds, facts, assessment)
        chosen.append((decision.tier, assessment.prompt_tokens))
    tiers = list(policy.tiers)
    pro = "pro" if "pro" in policy.tiers else tiers[min(1, len(tiers) - 1)]
    return [
        outcome(policy, f"policy:{alias}", rows, chosen),
        outcome(policy, f"all-{tiers[0]}", rows, [(tiers[0], tokens) for _, tokens in chosen]),
        outcome(policy, f"all-{pro}", rows, [(pro, tokens) for _, tokens in chosen]),
    ]


def outcome(
    policy: Policy, name: str, rows: Sequence[Row], chosen: Sequence[tuple[str, int]]
) -> Outcome:
    """Score one assignment of tiers to rows. The cheapest tier is scored with `weak_correct`,
    every other tier with `strong_correct`; costs assume no prefix-cache hits."""
    costs, quality, latency = [], [], []
    cheapest = next(iter(policy.tiers))
    for row, (name_of_tier, prompt_tokens) in zip(rows, chosen, strict=True):
        tier = policy.tiers[name_of_tier]
        output = expected_tokens(tier, None)
        costs.append(
            (
                prompt_tokens * tier.prices.input_usd_per_mtok
                + output * tier.prices.output_usd_per_mtok
            )
            / 1_000_000
        )
        quality.append(row.weak_correct if name_of_tier == cheapest else row.strong_correct)
        latency.append(expected_latency_ms(tier, profile_of(tier, {}, name_of_tier), None))
    n = len(rows)
    counts = Counter(tier for tier, _ in chosen)
    return Outcome(
        name=name,
        requests=n,
        shares={tier: counts[tier] / n if n else 0.0 for tier in policy.tiers},
        cost_per_1k_usd=_mean(costs) * 1000,
        quality=_mean(quality),
        latency_mean_ms=_mean(latency),
        latency_p95_ms=percentile(latency, 0.95),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def as_json(outcomes: Sequence[Outcome]) -> str:
    return json.dumps([asdict(o) for o in outcomes], indent=2)


def render(outcomes: Sequence[Outcome], tiers: Sequence[str]) -> None:
    from rich.table import Table

    from router.offline.terminal import table_console

    table = Table(
        title=f"policy simulation over {outcomes[0].requests if outcomes else 0} requests"
    )
    table.add_column("strategy")
    for tier in tiers:
        table.add_column(f"{tier} share", justify="right")
    for column in ("USD / 1k req", "quality", "latency mean ms", "latency p95 ms"):
        table.add_column(column, justify="right")
    for o in outcomes:
        table.add_row(
            o.name,
            *(f"{o.shares.get(tier, 0.0):.1%}" for tier in tiers),
            f"{o.cost_per_1k_usd:.4f}",
            f"{o.quality:.4f}",
            f"{o.latency_mean_ms:.0f}",
            f"{o.latency_p95_ms:.0f}",
        )
    table_console().print(table)
