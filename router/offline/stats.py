"""The `flashpro stats` command: a running server's /v1/stats as rich tables in the terminal.
Fetching is I/O; `render` only formats."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from router.offline.terminal import table_console


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="base URL of a running flashpro"
    )
    parser.add_argument("--recent", type=int, default=10, help="latest decisions to list")
    parser.add_argument(
        "--key",
        default=os.environ.get("FLASHPRO_KEY"),
        help="a monitoring or client key, for a flashpro with auth.required "
        "(default: $FLASHPRO_KEY)",
    )


def money(values: Sequence[float | None]) -> Callable[[float | None], str]:
    """One format for figures shown together: cents from a cent up, whole dollars from $100,
    two significant digits below a cent (as the dashboard shows them)."""
    size = max((abs(v) for v in values if v is not None), default=0.0)
    if size >= 100:
        decimals = 0
    elif size >= 0.01 or size == 0:
        decimals = 2
    else:
        decimals = min(8, 1 - math.floor(math.log10(size)))

    def shown(value: float | None) -> str:
        return "-" if value is None else f"${value:,.{decimals}f}"

    return shown


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def render(data: dict[str, Any], console: Console, recent: int = 10) -> None:
    totals = data["totals"]
    hit_rate = totals.get("hit_rate")
    summary = Table(title="flashpro", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right", no_wrap=True)
    summary.add_row("requests", str(totals["requests"]))
    summary.add_row("errors", str(totals["errors"]))
    usd = money([totals["spend_usd"], totals["baseline_usd"], totals["savings_usd"]])
    summary.add_row("spend", usd(totals["spend_usd"]))
    summary.add_row(f"all-{data.get('baseline_tier', 'pro')} cost", usd(totals["baseline_usd"]))
    summary.add_row("savings", usd(totals["savings_usd"]))
    cache = totals.get("cache") or {}
    cacheable = cache.get("hit", 0) + cache.get("miss", 0)
    summary.add_row(
        f"cache hit rate (of {cacheable} cacheable requests)",
        "-" if hit_rate is None else f"{hit_rate:.1%}",
    )
    summary.add_row("policy", str(data.get("policy_version", "-")))
    for figure, value in model_rows((data.get("learning") or {}).get("model") or {}):
        summary.add_row(figure, value)
    console.print(summary)

    tiers = Table(title="per tier")
    for column in ("tier", "requests", "share", "spend", "savings", "p50", "p95", "ttft p50"):
        tiers.add_column(column, justify="left" if column == "tier" else "right", no_wrap=True)
    by_tier = [data["by_tier"][name] for name in data["tiers"]]
    usd = money([t[k] for t in by_tier for k in ("spend_usd", "savings_usd")])
    for name, t in zip(data["tiers"], by_tier, strict=True):
        tiers.add_row(
            name,
            str(t["requests"]),
            f"{t['share']:.1%}",
            usd(t["spend_usd"]),
            usd(t["savings_usd"]),
            _ms(t["p50_ms"]),
            _ms(t["p95_ms"]),
            _ms(t["ttft_p50_ms"]),
        )
    console.print(tiers)

    latest = Table(title="recent decisions")
    rows = data["recent"][:recent]
    id_width = max((len(str(row["id"])) for row in rows), default=7)
    for column in ("request", "alias", "tier", "score", "cache", "rule", "reason"):
        whole = column == "request"  # ids are only useful whole
        latest.add_column(
            column, overflow="fold", no_wrap=whole, min_width=id_width if whole else None
        )
    for row in rows:
        latest.add_row(
            str(row["id"]),
            str(row["alias"] or "-"),
            row["tier"],
            f"{row['score']:.3f}",
            row["cache"],
            row["rule"],
            row["reason"],
        )
    console.print(latest)
    calibration_table(data.get("calibration") or {}, console)
    learning_table(data.get("learning") or {}, console)


def model_rows(model: dict[str, Any]) -> list[tuple[str, str]]:
    """The live classifier: its version, a failed reload, and what a promoted one gained on
    the held-out labels that promoted it (`flashpro learn`)."""
    if not model:
        return []
    rows = [("classifier", str(model.get("version", "-")))]
    if model.get("reload_error"):
        rows.append(("classifier reload failed", str(model["reload_error"])))
    before, after = model.get("apgr_before"), model.get("apgr_after")
    if before is not None and after is not None:
        when = model.get("promoted_at")
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when)) if when else "-"
        rows.append(
            (
                "promoted model, held-out APGR",
                f"{before:.3f} -> {after:.3f} on {model.get('heldout_n')} labels ({at})",
            )
        )
    return rows


def calibration_table(calibration: dict[str, Any], console: Console) -> None:
    """Aliases with `calibration: live`: per tier the policy's share beside the share of the
    scores the alias has seen, and the threshold that keeps them together."""
    if not calibration:
        return
    table = Table(title="shares held on live traffic (calibration: live)")
    for column in ("alias", "tier", "target", "actual", "threshold", "scores seen"):
        table.add_column(column, justify="left" if column in ("alias", "tier") else "right")
    for alias, report in calibration.items():
        seen = f"{report['observed']}" + (" (warming up)" if report.get("warming_up") else "")
        for tier, row in report["tiers"].items():
            actual, threshold = row.get("actual"), row.get("threshold")
            table.add_row(
                alias,
                tier,
                f"{row['target']:.1%}",
                "-" if actual is None else f"{actual:.1%}",
                "-" if threshold is None else f"{threshold:.3f}",
                seen,
            )
    console.print(table)


def learning_table(learning: dict[str, Any], console: Console) -> None:
    """Shadow comparisons (policy `learning:`): labels collected, today's spend against the
    daily budget, agreement of the two swapped judgements, failures and skips by reason."""
    if not learning.get("enabled"):
        return
    table = Table(title="learning from traffic (shadow comparisons)", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("labels collected", str(learning["labels"]))
    table.add_row("labels in the last 24 h", str(learning["labels_24h"]))
    agreement = learning.get("agreement")
    table.add_row(
        "judgements agreeing (order swapped)", "-" if agreement is None else f"{agreement:.1%}"
    )
    today = learning["spend_today_usd"]
    budget = learning.get("daily_budget_usd")
    usd = money([today["shadow"], today["judge"], budget])
    table.add_row("shadow answers today", usd(today["shadow"]))
    table.add_row("judgements today", usd(today["judge"]))
    table.add_row("daily budget", usd(budget))
    for outcome in ("failed", "skipped", "cancelled"):
        counts = learning.get(outcome) or {}
        if counts:
            shown = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
            table.add_row(outcome, shown)
    console.print(table)


def run_stats(args: argparse.Namespace) -> int:
    import httpx  # here, so the other commands start without it

    console = table_console()
    url = args.url.rstrip("/") + "/v1/stats"
    try:
        headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
        response = httpx.get(url, timeout=10.0, headers=headers)
        if response.status_code == 401:
            needed = "this key may not read it" if args.key else "it needs a key: pass --key"
            print(f"flashpro: cannot read {url}: {needed}", file=sys.stderr)
            return 2
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"flashpro: cannot read {url}: {exc}", file=sys.stderr)  # one line, unwrapped
        return 2
    render(response.json(), console, args.recent)
    return 0
