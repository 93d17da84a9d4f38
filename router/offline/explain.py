"""`flashpro policy explain`: a policy as readable decision tables. Pure apart from printing."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from router.routing.decision import Thresholds
from router.routing.latency import expected_latency_ms, profile_of
from router.routing.policy import Condition, Policy


def _when(condition: Condition) -> str:
    given = condition.model_dump(exclude_none=True)
    return " and ".join(f"{name}={value}" for name, value in given.items())


def explain(policy: Policy, thresholds: Mapping[str, Thresholds], console: Console) -> None:
    tiers = Table(title="tiers (cheapest first)")
    for column in ("tier", "model", "thinking", "USD/Mtok in/out", "expected latency"):
        tiers.add_column(column)
    for name, tier in policy.tiers.items():
        expected = expected_latency_ms(tier, profile_of(tier, {}, name), None)
        tiers.add_row(
            name,
            tier.model,
            tier.thinking + (f" ({tier.reasoning_effort})" if tier.reasoning_effort else ""),
            f"{tier.prices.input_usd_per_mtok:g} / {tier.prices.output_usd_per_mtok:g}",
            f"{expected:.0f} ms",
        )
    console.print(tiers)

    aliases = Table(title="aliases: the score picks the highest step it reaches")
    for column in ("alias", "below every step", "score steps", "max latency"):
        aliases.add_column(column)
    live = []
    for name, alias in policy.aliases.items():
        steps = thresholds[name]
        shown = ", ".join(f"{tier} >= {value:.4f}" for tier, value in steps.steps)
        if alias.calibration == "live":
            live.append(name)
            shown += " (live: these until 200 scores are seen)"
        latency = f"{alias.max_latency_ms:g} ms" if alias.max_latency_ms else "-"
        aliases.add_row(name, steps.default_tier, shown, latency)
    console.print(aliases)
    if live:
        console.print(
            f"{', '.join(live)}: calibration: live, so on a running flashpro the steps follow the "
            "scores each alias sees to keep its shares (see `flashpro stats` or /v1/stats)."
        )

    rules = Table(title="rules, in order: the first that changes the outcome wins")
    for column in ("#", "rule", "when", "then"):
        rules.add_column(column)
    for i, rule in enumerate(policy.rules, 1):
        then = rule.then.model_dump(exclude_none=True)
        rules.add_row(
            str(i), rule.name, _when(rule.when), ", ".join(f"{k}={v}" for k, v in then.items())
        )
    console.print(rules)

    limits = Table(title="then, live limits (in this order)")
    limits.add_column("limit")
    limits.add_column("effect")
    if policy.affinity is not None and policy.affinity.enabled:
        limits.add_row(
            "affinity", f"a conversation keeps its tier within {policy.affinity.margin} of a step"
        )
    if policy.share_cap is not None:
        cap = policy.share_cap
        limits.add_row(
            "share cap",
            f"past {cap.max_share:.0%} {cap.tier}+ over {cap.window_s}s, scores within "
            f"{cap.margin} above their step go down a tier",
        )
    for name, group in policy.groups.items():
        parts = []
        if group.default_alias:
            parts.append(f"alias {group.default_alias}")
        if group.allowed_tiers:
            parts.append("only " + ", ".join(group.allowed_tiers))
        if group.forbidden_tiers:
            parts.append("never " + ", ".join(group.forbidden_tiers))
        if group.budget:
            parts.append(f"budget {group.budget.model_dump(exclude_none=True)}")
        limits.add_row(f"group {name}", "; ".join(parts) or "-")
    limits.add_row(
        "latency", "tiers expected slower than max_latency_ms / x-flashpro-max-latency-ms move down"
    )
    if policy.budgets is not None:
        b = policy.budgets
        scopes = {"total": b.total, "per key": b.per_key}
        shown = "; ".join(
            f"{scope} {limit.model_dump(exclude_none=True)}"
            for scope, limit in scopes.items()
            if limit
        )
        limits.add_row("budgets", f"{shown}; when spent: {b.on_exhausted}")
    if policy.off_peak is not None:
        limits.add_row(
            "off-peak",
            f"{policy.off_peak.describe()}; off-peak x{policy.off_peak.discount:g} for tiers "
            "without off_peak_prices",
        )
    console.print(limits)
