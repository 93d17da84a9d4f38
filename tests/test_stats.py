"""`flashpro stats`: a running server's traffic summary as terminal tables."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from router.cli import main
from router.simulator.server import RunningSimulator
from tests.conftest import free_port
from tests.traffic import observed_flashpro, send_mix


@pytest.fixture(scope="module")
def served(
    simulator: RunningSimulator, upstream_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with observed_flashpro(simulator, tmp_path_factory.mktemp("stats")) as (base, _):
        send_mix(base)
        yield base


def test_stats_prints_tiers_spend_savings_and_decisions(
    served: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["stats", "--url", served]) == 0
    out = capsys.readouterr().out
    for text in ("requests", "13", "savings", "all-pro cost", "cache hit rate", "33.3%"):
        assert text in out
    for text in ("per tier", "flash", "pro", "p95", "recent decisions", "pinned:pro"):
        assert text in out
    # the shipped auto-economy alias holds its shares on live traffic: its target is shown
    calibration = httpx.get(served + "/v1/stats").json()["calibration"]
    target = calibration["auto-economy"]["tiers"]["pro"]["target"]
    assert "shares held on live traffic" in out and f"{target:.1%}" in out
    assert "(warming up)" in out


def test_stats_shows_whole_request_ids_and_what_the_hit_rate_is_over(
    served: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a pipe: no 80-column cut
    assert main(["stats", "--url", served, "--recent", "30"]) == 0
    out = capsys.readouterr().out
    ids = [row["id"] for row in httpx.get(served + "/v1/stats").json()["recent"]]
    assert ids and all(request_id in out for request_id in ids)
    assert "cache hit rate (of 6 cacheable requests)" in out
    assert "0.000000" not in out


def test_stats_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flashpro: cannot read") and err.count("\n") == 1
