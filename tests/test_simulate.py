"""`policy simulate` against a hand computation, and `policy explain`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.cli import run_policy_explain, run_policy_simulate
from router.offline.simulate import Row, percentile, simulate
from router.routing.classify import Assessment
from router.routing.decide import resolve_thresholds
from router.routing.policy import parse_policy
from router.schemas import ChatRequest

POLICY = """
version: 1
tiers:
  flash:
    model: deepseek/deepseek-v4-flash
    thinking: disabled
    prices: {input_usd_per_mtok: 1, cached_input_usd_per_mtok: 0.1, output_usd_per_mtok: 2}
    latency: {ttft_ms: 100, tokens_per_s: 100}
    expected_output_tokens: 100
  pro:
    model: deepseek/deepseek-v4-pro
    thinking: enabled
    reasoning_effort: high
    prices: {input_usd_per_mtok: 10, cached_input_usd_per_mtok: 1, output_usd_per_mtok: 20}
    latency: {ttft_ms: 1000, tokens_per_s: 50}
    expected_output_tokens: 100
    expected_reasoning_tokens: 400
  pro-max:
    model: deepseek/deepseek-v4-pro
    thinking: enabled
    reasoning_effort: max
    prices: {input_usd_per_mtok: 10, cached_input_usd_per_mtok: 1, output_usd_per_mtok: 20}
    latency: {ttft_ms: 2000, tokens_per_s: 25}
    expected_output_tokens: 100
    expected_reasoning_tokens: 900
aliases:
  auto: {default_tier: flash, thresholds: {pro: 0.5, pro-max: 0.9}}
"""

ROWS = [
    Row("easy", strong_correct=1, weak_correct=1),
    Row("middling", strong_correct=1, weak_correct=0),
    Row("hard", strong_correct=0, weak_correct=0),
    Row("easy too", strong_correct=1, weak_correct=0),
]
SCORES = {
    "easy": (0.1, 1000),
    "middling": (0.6, 2000),
    "hard": (0.95, 3000),
    "easy too": (0.2, 1000),
}


@dataclass(frozen=True)
class ScoreTable:
    """A classifier that looks the prompt up: exact expectations."""

    def assess(self, request: ChatRequest) -> Assessment:
        content = request.messages[-1].content
        assert isinstance(content, str)
        score, tokens = SCORES[content]
        return Assessment(score, True, tokens)

    def threshold_for_share(self, share: float) -> float:
        return 1.0 - share


def test_simulate_matches_a_hand_computation() -> None:
    policy = parse_policy(POLICY)
    thresholds = resolve_thresholds(policy, lambda share: 1.0 - share)
    routed, flash, pro = simulate(policy, thresholds, ScoreTable(), ROWS, "auto")
    # costs (USD per row): flash (tokens*1 + 100*2)/1e6; pro (tokens*10 + 500*20)/1e6;
    # pro-max (tokens*10 + 1000*20)/1e6. Latency: flash 100 + 100/100 s = 1100 ms;
    # pro 1000 + 500/50 s = 11000 ms; pro-max 2000 + 1000/25 s = 42000 ms.
    assert routed.name == "policy:auto"
    assert routed.shares == {"flash": 0.5, "pro": 0.25, "pro-max": 0.25}
    assert routed.cost_per_1k_usd == pytest.approx((1200 + 30000 + 50000 + 1200) / 4 / 1000)
    assert routed.quality == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert routed.latency_mean_ms == pytest.approx((1100 + 11000 + 42000 + 1100) / 4)
    assert routed.latency_p95_ms == 42000
    assert flash.name == "all-flash"
    assert flash.shares == {"flash": 1.0, "pro": 0.0, "pro-max": 0.0}
    assert flash.cost_per_1k_usd == pytest.approx((1200 + 2200 + 3200 + 1200) / 4 / 1000)
    assert flash.quality == pytest.approx(0.25)
    assert (flash.latency_mean_ms, flash.latency_p95_ms) == (1100, 1100)
    assert pro.name == "all-pro"
    assert pro.cost_per_1k_usd == pytest.approx((20000 + 30000 + 40000 + 20000) / 4 / 1000)
    assert pro.quality == pytest.approx(0.75)
    assert pro.latency_p95_ms == 11000


def test_a_live_alias_is_simulated_at_the_steps_its_own_traffic_settles_on() -> None:
    live = POLICY + (
        "  economy: {default_tier: flash, shares: {pro: 0.25}, calibration: live}\n"
        "  economy-fixed: {default_tier: flash, shares: {pro: 0.25}}\n"
    )
    policy = parse_policy(live)
    thresholds = resolve_thresholds(policy, lambda share: 1.0 - share)  # pro at 0.75: none
    rows = [ROWS[0], ROWS[3], ROWS[3], ROWS[1]] * 60  # scores 0.1, 0.2, 0.2, 0.6
    fixed = simulate(policy, thresholds, ScoreTable(), rows, "economy-fixed")[0]
    settled = simulate(policy, thresholds, ScoreTable(), rows, "economy")[0]
    assert fixed.shares["pro"] == 0.0
    assert settled.shares["pro"] == 0.25  # its step settles at 0.6: the policy's share
    few = simulate(policy, thresholds, ScoreTable(), rows[:10], "economy")[0]
    assert few.shares["pro"] == 0.0  # warming up: the calibration set's steps


def test_percentile_is_nearest_rank() -> None:
    assert percentile(range(1, 101), 0.95) == 95
    assert percentile([], 0.95) == 0.0


def test_simulate_command_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt": r.prompt,
                    "strong_correct": r.strong_correct,
                    "weak_correct": r.weak_correct,
                    "source": "t",
                }
            )
            for r in ROWS
        )
    )
    args = argparse.Namespace(file=policy, data=data, alias="auto", json=True)
    assert run_policy_simulate(args) == 0
    outcomes = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in outcomes] == ["policy:auto", "all-flash", "all-pro"]
    assert outcomes[0]["requests"] == 4
    args = argparse.Namespace(file=policy, data=data, alias="auto", json=False)
    assert run_policy_simulate(args) == 0
    assert "USD / 1k req" in capsys.readouterr().out


def test_explain_prints_the_decision_tables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    root = Path(__file__).resolve().parents[1]
    args = argparse.Namespace(file=root / "policies" / "default.yaml")
    assert run_policy_explain(args) == 0
    out = capsys.readouterr().out
    for text in ("tiers", "auto", "max-reasoning-for-reasoning-tasks", "latency"):
        assert text in out
