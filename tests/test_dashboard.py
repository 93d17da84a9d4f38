"""The live dashboard: /v1/stats aggregates, and the page rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.observe.record import RequestRecord
from router.observe.rolling import Rolling, percentile
from router.routing.decision import Decision
from router.simulator.server import RunningSimulator
from tests.browser import FLAGS, chromium_binary
from tests.browser import chromium as devtools_browser
from tests.conftest import ROOT
from tests.test_dashboard_layout import MEASURE
from tests.traffic import Sent, observed_flashpro, send_mix


def browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def traffic(
    simulator: RunningSimulator, upstream_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Sent]]:
    with observed_flashpro(simulator, tmp_path_factory.mktemp("dashboard")) as (base, _):
        yield base, send_mix(base)


def test_stats_endpoint_aggregates_the_traffic(traffic: tuple[str, Sent]) -> None:
    base, sent = traffic
    data = httpx.get(base + "/v1/stats").json()
    totals = data["totals"]
    assert totals["requests"] == 13 and totals["errors"] == 2
    assert totals["cache"]["hit"] == 2 and totals["hit_rate"] == pytest.approx(2 / 6)
    assert totals["baseline_usd"] > totals["spend_usd"] > 0
    assert totals["savings_usd"] == pytest.approx(totals["baseline_usd"] - totals["spend_usd"])
    assert data["tiers"][:2] == ["flash", "pro"]  # cheapest first
    assert sum(t["requests"] for t in data["by_tier"].values()) == 11
    assert sum(t["share"] for t in data["by_tier"].values()) == pytest.approx(1.0)
    assert data["by_tier"]["pro"]["p95_ms"] >= data["by_tier"]["pro"]["p50_ms"] > 0
    assert data["by_tier"]["pro"]["ttft_p50_ms"] is not None
    assert sum(sum(b["tiers"].values()) for b in data["series"]) == 11
    recent = data["recent"]
    assert len(recent) == 11 and all(r["reason"] and r["rule"] for r in recent)
    ok = {r.headers["x-flashpro-request-id"] for r in sent.responses if r.status_code == 200}
    assert {r["id"] for r in recent} == ok


def test_dashboard_page_is_self_contained(traffic: tuple[str, Sent]) -> None:
    base, _ = traffic
    page = httpx.get(base + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/stats" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN, works offline


def test_dashboard_renders_charts_in_headless_chromium(
    traffic: tuple[str, Sent], tmp_path: Path
) -> None:
    base, _ = traffic
    dom = browse(base + "/dashboard", tmp_path / "p1", "--virtual-time-budget=4000", "--dump-dom")
    html = dom.stdout
    assert 'data-rendered="13"' in html  # the page drew the data of all 13 requests
    bars = re.findall(r'<rect class="bar"[^>]*data-tier="([^"]+)"', html)
    assert {"flash", "pro"} <= set(bars)
    assert re.search(r'<path class="line spend" d="M[^"]+L', html)
    assert re.search(r'<path class="line savings" d="M[^"]+L', html)
    assert len(re.findall(r'<rect class="p50"', html)) >= 2
    assert len(re.findall(r'<rect class="share"', html)) >= 2
    spend = re.search(r'id="kpi-spend">\$([0-9.]+)<', html)
    savings = re.search(r'id="kpi-savings">\$([0-9.]+)<', html)
    assert spend and savings and float(savings.group(1)) > 0 and float(spend.group(1)) > 0
    # each figure to at least two significant digits: a small spend beside a larger baseline
    # keeps its own digits rather than rounding to the baseline's cents
    totals = httpx.get(base + "/v1/stats").json()["totals"]
    assert float(spend.group(1)) == pytest.approx(totals["spend_usd"], rel=0.05)
    assert float(savings.group(1)) == pytest.approx(totals["savings_usd"], rel=0.05)
    assert re.search(r'id="kpi-hit-rate">33\.3%<', html)
    recent = html[html.index('id="recent"') :]
    recent = recent[: recent.index("</table>")]
    assert recent.count('<span class="tier"') == 11  # recent decisions, with their reasons
    # the shipped auto-economy alias (calibration: live): target vs actual share per tier
    card = html[html.index('id="calibration-card"') :]
    card = card[: card.index("</section>")]
    assert "hidden" not in card[: card.index(">")]
    target = httpx.get(base + "/v1/stats").json()["calibration"]["auto-economy"]["tiers"]["pro"]
    assert "<td>auto-economy</td>" in card and f"{target['target'] * 100:.1f}%" in card
    learning = html[html.index('id="learning-card"') :]
    assert "hidden" in learning[: learning.index(">")]  # the default policy learns nothing

    shot = tmp_path / "dashboard.png"
    browse(
        base + "/dashboard",
        tmp_path / "p2",
        "--virtual-time-budget=4000",
        "--window-size=1280,1000",
        f"--screenshot={shot}",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, results / "dashboard.png")


def _served(
    tier: str, rank: int, at: float, latency_ms: float, cache: str = "miss"
) -> RequestRecord:
    decision = Decision("auto", tier, "m", "disabled", None, 0.5, "threshold", "why")
    return RequestRecord(
        f"r{at}",
        200,
        decision,
        cache=cache,
        tier_rank=rank,
        latency_ms=latency_ms,
        at=at,
        cost_usd=0.001,
        baseline_usd=0.004,
    )


def test_rolling_window_drops_old_buckets_and_keeps_totals() -> None:
    rolling = Rolling(bucket_s=10, window_s=60)
    for i in range(20):
        rolling.add(_served("pro" if i % 4 == 0 else "flash", 1 if i % 4 == 0 else 0, i * 10.0, i))
    rolling.add(RequestRecord("bad", 404, None, error="model_not_found", at=200.0))
    data = rolling.snapshot(now=200.0)
    assert data["totals"]["requests"] == 21 and data["totals"]["errors"] == 1
    assert data["tiers"] == ["flash", "pro"]
    assert [b["t"] for b in data["series"]] == [150.0, 160.0, 170.0, 180.0, 190.0]
    assert data["by_tier"]["pro"]["share"] == pytest.approx(0.25)
    assert data["totals"]["savings_usd"] == pytest.approx(20 * 0.003)
    assert data["totals"]["hit_rate"] == 0.0


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0
    assert percentile([7.0], 0.95) == 7.0 and percentile([], 0.5) is None


def test_recent_decisions_newest_first_and_rounded() -> None:
    rolling = Rolling()
    decision = Decision("auto", "pro", "m", "enabled", "high", 0.123456789, "threshold", "why")
    for i in range(40):
        at = 1000.0 + i
        record = RequestRecord(f"r{i}", 200, decision, latency_ms=12.3456, cost_usd=0.5, at=at)
        rolling.add(record)
    recent = rolling.snapshot(now=1040.0)["recent"]
    assert [row["id"] for row in recent] == [f"r{i}" for i in range(39, 9, -1)]
    assert recent[0] == {
        "id": "r39",
        "at": 1039.0,
        "alias": "auto",
        "tier": "pro",
        "score": 0.1235,
        "rule": "threshold",
        "reason": "why",
        "cache": "bypass",
        "latency_ms": 12.3,
        "cost_usd": 0.5,
    }
    assert list(recent[0]) == [
        "id",
        "at",
        "alias",
        "tier",
        "score",
        "rule",
        "reason",
        "cache",
        "latency_ms",
        "cost_usd",
    ]


def test_records_in_one_bucket_add_up_and_a_late_record_joins_the_newest() -> None:
    rolling = Rolling(bucket_s=10, window_s=30)
    for at in (100.0, 105.0, 109.999, 110.0, 140.0, 120.0):  # the last one arrives late
        rolling.add(_served("flash", 0, at, 1.0))
    series = rolling.snapshot(now=140.0)["series"]
    assert [(b["t"], b["tiers"]) for b in series] == [(140.0, {"flash": 2})]
    assert rolling.snapshot(now=140.0)["totals"]["requests"] == 6


@pytest.mark.parametrize("width", [1400, 420])
def test_dashboard_of_real_traffic_fits_the_window(
    width: int, traffic: tuple[str, Sent], tmp_path: Path
) -> None:
    base, sent = traffic
    with devtools_browser(tmp_path / "profile") as page:
        page.open(base + "/dashboard", width)
        page.wait_for("document.body && document.body.dataset.rendered === '13'")
        measured = page.evaluate(MEASURE)
        shot_width, _ = page.screenshot(tmp_path / "shot.png")
    assert measured["problems"] == [] and shot_width == width
    ok = [r.headers["x-flashpro-request-id"] for r in sent.responses if r.status_code == 200]
    assert set(measured["ids"]) == set(ok)  # whole ids, not a shared prefix
