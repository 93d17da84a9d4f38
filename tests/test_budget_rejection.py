"""A spent `reject` budget: a 429 the OpenAI SDK does not retry, with Retry-After until the
reset, its own code, and a message with spend, limit and reset time; the remaining-budget
gauge follows a reload that raises the budget."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from router.app import build_deps
from router.routing.constrain import Spent, budget_exhausted
from router.routing.limits import BudgetLimit
from router.simulator.server import RunningSimulator
from tests.conftest import ROOT, serve_app, settings_for, wait_until

LIMIT = 0.00001  # a Flash answer from the simulator costs more than this


def policy_with_budget(path: Path, usd_per_day: float) -> None:
    data = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    data["budgets"] = {"on_exhausted": "reject", "total": {"usd_per_day": usd_per_day}}
    path.write_text(yaml.safe_dump(data))


def remaining(base: str) -> float | None:
    for line in httpx.get(base + "/metrics").text.split("\n"):
        if line.startswith("flashpro_budget_remaining_usd{") and 'period="day"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_spent_budget_is_a_429_the_sdk_does_not_retry(
    sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy_with_budget(policy, LIMIT)
    settings = settings_for(sim, policy=policy, policy_poll_seconds=0.1)
    with serve_app(settings, build_deps(settings)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")  # default: 2 retries
        messages = [{"role": "user", "content": "Say hi"}]
        client.chat.completions.create(model="flash", messages=messages)  # spends the budget
        calls = len(sim.requests())
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="flash", messages=messages)
        error = caught.value
        now = datetime.now(UTC)
        assert len(sim.requests()) == calls  # refused before the upstream
        stats = httpx.get(base + "/v1/stats").json()
        assert stats["totals"]["errors"] == 1  # the SDK asked once: no retries

        assert error.code == "budget_exhausted"
        headers = error.response.headers
        assert headers["x-should-retry"] == "false"
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        wait = int(headers["retry-after"])
        assert 0 < wait <= (midnight - now).total_seconds() + 2
        message = error.body["message"] if isinstance(error.body, dict) else str(error)
        assert "total" in message and "today" in message
        # spend and limit in one precision, the spend not rounded to zero
        found = re.search(r"spent: \$(0\.\d{6}) of \$0\.000010 today", message)
        assert found and float(found.group(1)) > LIMIT, message
        assert "00:00 UTC" in message

        assert remaining(base) == 0.0
        policy_with_budget(policy, 50.0)  # a reload raises the budget; no request follows
        wait_until(lambda: (remaining(base) or 0) > 49, timeout_s=10, what="the new budget")
        spent = 50.0 - (remaining(base) or 0.0)
        assert 0 < spent < 0.01
        client.chat.completions.create(model="flash", messages=messages)


@pytest.mark.parametrize(
    ("limit", "day", "month", "now", "reset", "wait"),
    [
        (BudgetLimit(usd_per_day=5), 5.03125, 9.0, "2026-12-31T23:00:00", "2027-01-01 00:00", 3600),
        (
            BudgetLimit(usd_per_month=300),
            1.0,
            300.5,
            "2026-12-31T23:00:00",
            "2027-01-01 00:00",
            3600,
        ),
        (
            BudgetLimit(usd_per_month=300),
            1.0,
            300.5,
            "2026-02-10T00:00:00",
            "2026-03-01 00:00",
            1641600,
        ),
        (
            BudgetLimit(usd_per_day=5, usd_per_month=9),
            5.5,
            9.5,
            "2026-06-15T12:00:00",
            "2026-07-01 00:00",
            1339200,
        ),
    ],
)
def test_budget_rejection_names_spend_limit_and_reset(
    limit: BudgetLimit, day: float, month: float, now: str, reset: str, wait: int
) -> None:
    at = datetime.fromisoformat(now).replace(tzinfo=UTC).timestamp()
    error = budget_exhausted(Spent("group:research", limit, day, month), at)
    assert error.status == 429 and error.code == "budget_exhausted"
    assert error.headers["retry-after"] == str(wait)
    assert f"resets at {reset} UTC" in error.message
    assert "group 'research'" in error.message
    assert ("monthly" in error.message) == (limit.usd_per_month is not None)
    assert "$5.03 of $5.00 today" in error.message or "this month" in error.message
