"""The dashboard page laid out in headless Chromium at a desktop and a phone width: nothing
overflows or overlaps, time is to scale, money reads sensibly, request ids are whole.

The page is served as flashpro serves it, beside a /v1/stats of known content (a traffic gap,
hundreds of buckets, long reasons), so every figure can be checked exactly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.conftest import ROOT

NOW = 1_764_480_000.0  # a fixed clock: the page draws whatever /v1/stats says
TIERS = ["flash", "pro", "pro-max"]
GAP_S = 300.0


def bucket(t: float, flash: int, pro: int, pro_max: int) -> dict[str, Any]:
    counts = {"flash": flash, "pro": pro, "pro-max": pro_max}
    spend = 0.0004 * flash + 0.0061 * pro + 0.0122 * pro_max
    return {
        "t": t,
        "tiers": {k: v for k, v in counts.items() if v},
        "spend_usd": spend,
        "savings_usd": 0.0057 * flash,
        "hits": 1 if flash > 3 else 0,
    }


def crafted_stats() -> dict[str, Any]:
    """Five busy minutes, five quiet ones, then fifteen busy minutes up to now."""
    first = [NOW - 1500 + 10 * i for i in range(30)]
    second = [first[-1] + GAP_S + 10 * i for i in range(90)]
    series = [bucket(t, 3 + i % 5, i % 3, 1 if i % 7 == 0 else 0) for i, t in enumerate(first)]
    series += [bucket(t, 1 + i % 4, (i + 1) % 2, 0) for i, t in enumerate(second)]
    series[5]["tiers"] = {"pro-max": 2}  # a bucket that served only the top tier
    spend = sum(b["spend_usd"] for b in series)
    savings = sum(b["savings_usd"] for b in series)
    requests = sum(sum(b["tiers"].values()) for b in series)
    recent = [
        {
            "id": f"4f1c9a07b2de{1000 + i:08x}",  # as flashpro makes them: one prefix per process
            "at": NOW - 3 * i,
            "alias": "auto",
            "tier": TIERS[i % 3],
            "score": 0.1234 + i / 100,
            "rule": "threshold:pro" if i % 3 else "agents-stay-responsive",
            "reason": "score 0.7312 >= pro threshold 0.6100 (share 30%); the request defines "
            "tools, so max_tier pro; conversation affinity kept the tier of its earlier turns",
            "cache": "hit" if i % 4 == 0 else "miss",
            "latency_ms": 1234.5 + i,
            "cost_usd": 0.000731 * (i + 1),
        }
        for i in range(30)
    ]
    by_tier = {
        tier: {
            "requests": requests // 3,
            "share": 1 / 3,
            "spend_usd": spend / 3,
            "savings_usd": savings / 3,
            "p50_ms": 812.0 * (i + 1),
            "p95_ms": 2931.0 * (i + 1),
            "ttft_p50_ms": 301.0,
        }
        for i, tier in enumerate(TIERS)
    }
    return {
        "now": NOW,
        "bucket_s": 10,
        "window_s": 1800,
        "tiers": TIERS,
        "totals": {
            "requests": requests,
            "errors": 3,
            "spend_usd": spend,
            "baseline_usd": spend + savings,
            "savings_usd": savings,
            "cache": {"hit": 40, "miss": 80, "bypass": 300},
            "hit_rate": 40 / 120,
            "hit_rate_all": 40 / requests,
        },
        "by_tier": by_tier,
        "series": series,
        "recent": recent,
        "policy_version": "0123456789ab",
        "baseline_tier": "pro",
        "classifier_version": "learned-0123456789ab",
        "learning": {
            "model": {
                "version": "learned-0123456789ab",
                "reload_error": None,
                "promoted_at": 1764489600.0,
                "previous": "shipped-ba9876543210",
                "heldout_n": 240,
                "apgr_before": 0.4812,
                "apgr_after": 0.6123,
            }
        },
    }


@pytest.fixture(scope="module")
def stats_site() -> Iterator[tuple[str, dict[str, Any]]]:
    """The dashboard page and a fixed /v1/stats, over real HTTP on loopback."""
    page = resources.files("router").joinpath("data/dashboard.html").read_bytes()
    stats = crafted_stats()
    body = json.dumps(stats).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content, kind = (page, "text/html") if self.path == "/dashboard" else (body, "json")
            self.send_response(200)
            self.send_header("content-type", "application/json" if kind == "json" else kind)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()


# Everything the test measures in the page, as one JSON value.
MEASURE = r"""
(() => {
  const box = e => e.getBoundingClientRect();
  const overlap = (a, b) => Math.max(0, Math.min(a.right, b.right) - Math.max(a.left, b.left))
                          * Math.max(0, Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top));
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > innerWidth) problems.push(`page is ${root.scrollWidth}px wide in ${innerWidth}px`);
  for (const card of document.querySelectorAll(".card")) {
    const r = box(card);
    if (r.left < -0.5 || r.right > innerWidth + 0.5) problems.push(`card ${card.textContent.slice(0, 30)} is outside the window`);
  }
  for (const value of document.querySelectorAll(".kpi .value, .kpi .label")) {
    if (value.scrollWidth > value.clientWidth + 1) problems.push(`number card text clipped: ${value.textContent}`);
  }
  for (const svg of document.querySelectorAll("svg")) {
    const frame = box(svg);
    const texts = [...svg.querySelectorAll("text")].map(t => [t.textContent, box(t)]);
    texts.forEach(([label, r], i) => {
      if (r.left < frame.left - 1 || r.right > frame.right + 1 || r.top < frame.top - 1 || r.bottom > frame.bottom + 1)
        problems.push(`${svg.id}: label ${label} sticks out of its chart`);
      for (const [other, s] of texts.slice(i + 1))
        if (overlap(r, s) > 1) problems.push(`${svg.id}: labels ${label} and ${other} overlap`);
    });
  }
  const bars = [...document.querySelectorAll("#share-chart rect.bar")].map(r => ({
    t: Number(r.dataset.t), tier: r.dataset.tier,
    x: Number(r.getAttribute("x")), width: Number(r.getAttribute("width"))}));
  const ids = [...document.querySelectorAll("#recent tbody tr")].map(tr => tr.children[1].textContent);
  const idCells = [...document.querySelectorAll("#recent tbody tr")].map(tr => tr.children[1]);
  for (const cell of idCells) if (cell.scrollWidth > cell.clientWidth + 1) problems.push(`request id cut: ${cell.textContent}`);
  const text = id => document.getElementById(id).textContent;
  return {problems, bars, ids, spend: text("kpi-spend"), savings: text("kpi-savings"),
          baseline: text("kpi-baseline"), hitRate: text("kpi-hit-rate"),
          hitLabel: document.getElementById("kpi-hit-rate").previousElementSibling.textContent,
          spendLabels: [...document.querySelectorAll("#spend-chart text")].map(t => t.textContent),
          cells: [...document.querySelectorAll("#recent tbody td")].map(td => td.textContent),
          meta: text("meta")};
})()
"""


@pytest.mark.parametrize("width", [1400, 420])
def test_dashboard_fits_the_window_without_overlaps(
    width: int, stats_site: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    base, stats = stats_site
    with chromium(tmp_path / "profile") as page:
        page.open(base + "/dashboard", width)
        page.wait_for("document.body && document.body.dataset.rendered !== undefined")
        measured = page.evaluate(MEASURE)
        shot = tmp_path / f"dashboard-{width}.png"
        shot_width, shot_height = page.screenshot(shot)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / shot.name).write_bytes(shot.read_bytes())

    assert measured["problems"] == []
    # the live classifier, and what the promoted one gained on its held-out labels
    assert (
        "classifier learned-0123456789ab (held-out APGR 0.481 \u2192 0.612 on 240 labels)"
        in (measured["meta"])
    )
    # the whole page, captured beyond the window, is no wider than the window
    assert shot_width == width and shot_height > 400

    # a bar for every tier of every bucket, placed in proportion to its time
    expected = {(b["t"], tier) for b in stats["series"] for tier in b["tiers"]}
    assert {(bar["t"], bar["tier"]) for bar in measured["bars"]} == expected
    lefts = sorted({(bar["t"], bar["x"]) for bar in measured["bars"]})
    (t0, x0), (t1, x1) = lefts[0], lefts[-1]
    scale = (x1 - x0) / (t1 - t0)
    for t, x in lefts:
        assert x == pytest.approx(x0 + (t - t0) * scale, abs=0.6)
    first_gap = next(i for i in range(1, len(lefts)) if lefts[i][0] - lefts[i - 1][0] > 10)
    gap_px = lefts[first_gap][1] - lefts[first_gap - 1][1]
    step_px = lefts[1][1] - lefts[0][1]
    assert gap_px == pytest.approx(step_px * GAP_S / 10, rel=0.02)  # 5 minutes look it

    # money: cents once a figure passes a cent; spend, savings and baseline alike
    spend, savings = measured["spend"], measured["savings"]
    assert spend == f"${stats['totals']['spend_usd']:.2f}"
    assert savings == f"${stats['totals']['savings_usd']:.2f}"
    assert measured["baseline"] == f"${stats['totals']['baseline_usd']:.2f}"
    for label in measured["spendLabels"] + measured["cells"]:
        assert "0.000000" not in label and not label.startswith("$0.0000")

    # the hit rate says what it is over
    assert measured["hitRate"] == "33.3%" and "cacheable" in measured["hitLabel"].lower()
    # whole request ids
    assert measured["ids"] == [row["id"] for row in stats["recent"]]
