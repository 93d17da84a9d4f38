"""The `flashpro stats` command: a running server's /v1/stats as rich tables in the terminal.
Fetching is I/O; `render` only formats."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="base URL of a running flashpro"
    )
    parser.add_argument("--recent", type=int, default=10, help="latest decisions to list")


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def render(data: dict[str, Any], console: Console, recent: int = 10) -> None:
    totals = data["totals"]
    hit_rate = totals.get("hit_rate")
    summary = Table(title="flashpro", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_row("requests", str(totals["requests"]))
    summary.add_row("errors", str(totals["errors"]))
    summary.add_row("spend", _usd(totals["spend_usd"]))
    summary.add_row(f"all-{data.get('baseline_tier', 'pro')} cost", _usd(totals["baseline_usd"]))
    summary.add_row("savings", _usd(totals["savings_usd"]))
    summary.add_row("cache hit rate", "-" if hit_rate is None else f"{hit_rate:.1%}")
    summary.add_row("policy", str(data.get("policy_version", "-")))
    console.print(summary)

    tiers = Table(title="per tier")
    for column in ("tier", "requests", "share", "spend", "savings", "p50", "p95", "ttft p50"):
        tiers.add_column(column, justify="left" if column == "tier" else "right")
    for name in data["tiers"]:
        t = data["by_tier"][name]
        tiers.add_row(
            name,
            str(t["requests"]),
            f"{t['share']:.1%}",
            _usd(t["spend_usd"]),
            _usd(t["savings_usd"]),
            _ms(t["p50_ms"]),
            _ms(t["p95_ms"]),
            _ms(t["ttft_p50_ms"]),
        )
    console.print(tiers)

    latest = Table(title="recent decisions")
    for column in ("request", "alias", "tier", "score", "cache", "rule", "reason"):
        latest.add_column(column, overflow="fold")
    for row in data["recent"][:recent]:
        latest.add_row(
            str(row["id"])[:12],
            str(row["alias"] or "-"),
            row["tier"],
            f"{row['score']:.3f}",
            row["cache"],
            row["rule"],
            row["reason"],
        )
    console.print(latest)


def run_stats(args: argparse.Namespace) -> int:
    console = Console()
    url = args.url.rstrip("/") + "/v1/stats"
    try:
        response = httpx.get(url, timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        Console(stderr=True).print(f"flashpro stats: cannot read {url}: {exc}")
        return 1
    render(response.json(), console, args.recent)
    return 0
