"""Shadow comparisons against the simulated DeepSeek: sampling near the threshold, the judge's
two position-swapped calls, the shared gates, and a client answer that nothing delays or alters."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from router.app import build_deps
from router.cli import main
from router.pipeline import Deps
from router.routing.classify import Assessment, estimate_tokens
from router.routing.routed import Routing
from router.schemas import ChatRequest
from router.settings import Settings
from router.simulator.server import (
    RecordedRequest,
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)
from router.simulator.truth import GroundTruth, hashed_difficulty
from router.state.labels import LABELS_KEY, STATS_KEY, RedisLabelStore
from router.state.store import Store, connect
from tests.conftest import UPSTREAM_KEY, RedisServer, serve_app, settings_for, wait_until
from tests.test_dashboard import browse

DEFAULT = resources.files("router").joinpath("data/default.yaml").read_text("utf-8")
PRO = "deepseek-v4-pro"
FLASH = "deepseek-flash"
_SCORE = re.compile(r"score=([0-9.]+)")


@dataclass(frozen=True)
class PromptScore:
    """Scores a request by the `score=x` its last message names; calibration uniform on [0, 1]."""

    def assess(self, request: ChatRequest) -> Assessment:
        found = _SCORE.search(request.messages[-1].text())
        score = float(found.group(1)) if found else 0.0
        return Assessment(score, False, estimate_tokens(request))

    def threshold_for_share(self, share: float) -> float:
        return 1.0 - share

    def share_above(self, score: float) -> float:
        return 1.0 - score


def policy_file(tmp_path: Path, learning: str) -> Path:
    """The default policy (alias auto: Pro from 0.70 with this classifier) with `learning`."""
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT + "\nlearning: " + learning + "\n")
    return path


def deps_for(settings: Settings) -> Deps:
    deps = build_deps(settings)
    classifier = PromptScore()
    policy, version = deps.routing.policy, deps.routing.version
    routing = Routing.build(policy, version, classifier, {}, "prompt-score")
    routing = replace(routing, keys=deps.routing.keys)
    return replace(deps, routing=routing, holder=None)


@pytest.fixture(scope="module")
def judged() -> Iterator[RunningSimulator]:
    """A simulator with a ground truth: answers marked good or poor, and a judge (no noise)."""
    truth = GroundTruth(hashed_difficulty, judge_noise=0.0)
    config = SimulatorConfig(default_profiles(), speed=0.01, api_key=UPSTREAM_KEY, truth=truth)
    with start_in_thread(config) as running:
        yield running


@pytest.fixture
def clean_sim(judged: RunningSimulator) -> Iterator[RunningSimulator]:
    judged.clear()
    yield judged
    httpx.delete(judged.url + "/_sim/faults")


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0)


def ask(base: str, text: str, **extra: Any) -> Any:
    return client(base).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], temperature=0, **extra
    )


def learning_stats(base: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(base + "/v1/stats", timeout=10).json()["learning"]
    return stats


def settled(base: str, expected: int) -> dict[str, Any]:
    """The learning figures once `expected` comparisons ended (labelled, failed or skipped)."""

    def ended(stats: dict[str, Any]) -> int:
        parts = [stats["labels"], *stats["failed"].values()]
        parts += [n for reason, n in stats["skipped"].items() if reason in ("rate", "budget")]
        return int(sum(parts))

    wait_until(lambda: ended(learning_stats(base)) >= expected, 60, "the comparisons")
    wait_until(lambda: learning_stats(base)["in_flight"] == 0, 60, "the comparisons")
    return learning_stats(base)


def judge_calls(sim: RunningSimulator) -> list[str]:
    return [text for r in chats(sim) if "<answer_a>" in (text := last_text(r))]


def chats(sim: RunningSimulator) -> list[RecordedRequest]:
    return [r for r in sim.requests() if r.path.endswith("/chat/completions") and r.body]


def last_text(recorded: RecordedRequest) -> str:
    assert recorded.body is not None
    content = recorded.body["messages"][-1]["content"]
    return content if isinstance(content, str) else ""


def test_sampling_compares_only_near_the_threshold_when_the_floor_is_tiny(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    learning = "{sample_rate: 1.0, near_threshold: 0.3, floor: 0.000001, max_per_minute: 100}"
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, learning))
    near = [f"near {i} score=0.70" for i in range(3)]  # at the threshold: chance 1
    far = [f"far {i} score=0.0{i}" for i in range(5)]
    with serve_app(settings, deps_for(settings)) as base:
        for text in near + far:
            ask(base, text)
        stats = settled(base, len(near))
    asked = [last_text(r) for r in chats(clean_sim)]
    for text in near:  # the client's call and the shadow one
        assert asked.count(text) == 2, stats  # the figures say what became of a comparison
    for text in far:
        assert asked.count(text) == 1, stats
    assert len(judge_calls(clean_sim)) == 2 * len(near), stats
    assert stats["enabled"] is True


def test_the_judge_sees_the_strong_answer_first_once_and_second_once(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    learning = "{sample_rate: 1.0, floor: 1.0}"
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, learning))
    with serve_app(settings, deps_for(settings)) as base:
        served = ask(base, "Explain recursion score=0.10")
        settled(base, 1)
    assert served.model == FLASH
    text = served.choices[0].message.content
    judged = judge_calls(clean_sim)
    assert len(judged) == 2
    in_a = [text in j.split("<answer_a>")[1].split("</answer_a>")[0] for j in judged]
    in_b = [text in j.split("<answer_b>")[1].split("</answer_b>")[0] for j in judged]
    assert sorted(in_a) == [False, True] and sorted(in_b) == [False, True]
    shadow = [r for r in chats(clean_sim) if "<answer_a>" not in last_text(r)]
    assert [r.body["model"] for r in shadow if r.body] == [FLASH, PRO]  # client's, then shadow's
    assert all("Explain recursion" in j for j in judged)


def test_an_unreadable_verdict_is_counted_and_no_label_is_kept(
    sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    """The simulator without a ground truth answers a judge with prose and no verdict."""
    settings = settings_for(sim, policy=policy_file(tmp_path, "{sample_rate: 1.0, floor: 1.0}"))
    deps = deps_for(settings)
    with serve_app(settings, deps) as base:
        ask(base, "Name a colour score=0.2")
        stats = settled(base, 1)
    assert stats["failed"] == {"verdict": 1} and stats["labels"] == 0


def test_a_failing_shadow_tier_leaves_the_client_answer_alone(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(
        clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1.0, floor: 1.0}")
    )
    with serve_app(settings, deps_for(settings)) as base:
        httpx.post(clean_sim.url + "/_sim/faults", json={"model": PRO, "status": 500, "count": 1})
        answer = ask(base, "Say hi score=0.3")
        stats = settled(base, 1)
    assert answer.model == FLASH and answer.choices[0].message.content
    assert stats["failed"] == {"upstream": 1}
    assert len([r for r in chats(clean_sim) if r.body and r.body["model"] == PRO]) == 1  # no retry


def streamed_text(base: str, text: str) -> str:
    chunks = client(base).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], stream=True, temperature=0
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_slow_shadow_tier_does_not_delay_or_alter_the_client_answer(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    text, streamed = "Describe the sea score=0.4", "Describe a river score=0.4"
    off = settings_for(clean_sim)
    with serve_app(off, deps_for(off)) as base:
        plain = client(base).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], temperature=0
        )
        plain_streamed = streamed_text(base, streamed)
    on = settings_for(
        clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1.0, floor: 1.0, timeout_s: 30}")
    )
    httpx.post(clean_sim.url + "/_sim/faults", json={"model": PRO, "delay_ms": 5000, "count": 2})
    deps = deps_for(on)
    with serve_app(on, deps) as base:
        shadowed = client(base).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], temperature=0
        )
        during = learning_stats(base)
        assert streamed_text(base, streamed) == plain_streamed
        # both answers arrived while their shadow calls still waited on the slow tier
        assert learning_stats(base)["in_flight"] == 2
    assert during["in_flight"] == 1 and during["labels"] == 0 and not during["failed"]
    first, second = plain.parse(), shadowed.parse()
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.model == second.model and first.choices[0] == second.choices[0]
    assert first.usage and second.usage  # the same tokens (DeepSeek's prefix cache aside)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens
    assert first.usage.completion_tokens == second.usage.completion_tokens
    for header in ("x-flashpro-tier", "x-flashpro-score", "x-flashpro-rule", "x-flashpro-cache"):
        assert plain.headers[header] == shadowed.headers[header]
    totals = asyncio.run(deps.labels.totals())
    assert totals == {"cancelled:shutdown": 2}  # the shutdown cancelled both, and counted them


def stored_labels(deps: Deps) -> list[dict[str, Any]]:
    return asyncio.run(deps.labels.labels())


def test_each_sampled_request_gets_a_label_with_both_verdicts(
    clean_sim: RunningSimulator,
    upstream_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1, floor: 1}"))
    deps = deps_for(settings)
    texts = [f"Question {i} about sorting score=0.{10 + i}" for i in range(6)]
    with serve_app(settings, deps) as base:
        served = {text: ask(base, text).choices[0].message.content for text in texts}
        stats = settled(base, len(texts))
        monkeypatch.setenv("COLUMNS", "200")
        assert main(["stats", "--url", base]) == 0
        shown = capsys.readouterr().out
        dom = browse(
            base + "/dashboard", tmp_path / "p", "--virtual-time-budget=4000", "--dump-dom"
        )
    labels = stored_labels(deps)
    assert len(labels) == len(texts) and stats["labels"] == len(texts)
    by_id = {label["id"] for label in labels}
    assert len(by_id) == len(texts)
    for label in labels:
        assert (label["alias"], label["served"], label["weak"], label["strong"]) == (
            "auto",
            "flash",
            "flash",
            "pro",
        )
        assert len(label["verdicts"]) == 2 and set(label["verdicts"]) <= {0.0, 0.5, 1.0}
        assert label["gain"] == sum(label["verdicts"]) / 2
        assert label["agree"] is True  # a judge without noise names the same winner twice
        assert label["classifier"] == "prompt-score"
        assert label["cost_usd"]["shadow"] > 0 and label["cost_usd"]["judge"] > 0
        assert label["features"]["buckets"] and "request" not in label
    # the simulated Pro answers well whenever Flash does: a good Flash answer cannot lose
    scores = sorted(label["score"] for label in labels)
    assert scores == sorted(float(t.rsplit("=", 1)[1]) for t in texts)
    good = [text for text, answer in served.items() if answer.endswith("[quality: good]")]
    poor = [text for text in texts if text not in good]
    gains = {label["score"]: label["gain"] for label in labels}
    assert all(gains[float(t.rsplit("=", 1)[1])] == 0.5 for t in good)
    assert all(gains[float(t.rsplit("=", 1)[1])] in (0.5, 1.0) for t in poor)
    # the figures: /v1/stats, flashpro stats and the dashboard
    assert stats["agreement"] == 1.0 and stats["labels_24h"] == len(texts)
    spent = stats["spend_today_usd"]
    assert spent["shadow"] == pytest.approx(sum(x["cost_usd"]["shadow"] for x in labels), abs=1e-5)
    assert spent["judge"] == pytest.approx(sum(x["cost_usd"]["judge"] for x in labels), abs=1e-5)
    assert "learning from traffic" in shown and "100.0%" in shown
    assert f"labels collected {len(texts)}".split()[-1] in shown
    card = dom.stdout[dom.stdout.index('id="learning-card"') :]
    card = card[: card.index("</section>")]
    assert "hidden" not in card[: card.index(">")]
    assert f'<td class="num">{len(texts)}</td>' in card and "100.0%" in card


def test_prompts_are_kept_in_labels_only_with_consent_and_the_spend_is_charged(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    learning = (
        "{sample_rate: 1, floor: 1, store_prompts: true}\nbudgets: {total: {usd_per_day: 100}}"
    )
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, learning))
    deps = deps_for(settings)
    with serve_app(settings, deps) as base:
        answer = client(base).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "My private question score=0.2"}]
        )
        settled(base, 1)
    (label,) = stored_labels(deps)
    assert label["request"]["messages"] == [
        {"role": "user", "content": "My private question score=0.2"}
    ]
    # the client's answer, the shadow answer and both judgements, all in the total budget
    ((day, _month),) = asyncio.run(deps.controls.ledger.spent(["total"], time.time()))
    client_usd = float(answer.headers["x-flashpro-cost-usd"])
    learned_usd = label["cost_usd"]["shadow"] + label["cost_usd"]["judge"]
    assert day == pytest.approx(client_usd + learned_usd, rel=1e-6)


def test_rate_and_budget_gates_are_shared_by_two_processes_on_one_redis(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path, redis_server: RedisServer
) -> None:
    async def forget() -> None:
        store = RedisLabelStore(Store(connect(redis_server.url)))
        client = store._store.client
        await client.delete(LABELS_KEY, STATS_KEY)
        await client.delete(*await client.keys("flashpro:v1:rate:learning:*") or ["none"])
        await store.aclose()

    asyncio.run(forget())
    rated = policy_file(tmp_path, "{sample_rate: 1, floor: 1, max_per_minute: 2}")
    settings = settings_for(clean_sim, policy=rated, redis_url=redis_server.url)
    with (
        serve_app(settings, deps_for(settings)) as one,
        serve_app(settings, deps_for(settings)) as two,
    ):
        if time.time() % 60 > 45:  # the per-minute window is a calendar minute: start a new one
            time.sleep(61 - time.time() % 60)
        minute = int(time.time() // 60)
        for i in range(3):
            ask(one, f"first process {i} score=0.3")
            ask(two, f"second process {i} score=0.3")
        stats = settled(one, 6)
        minutes = int(time.time() // 60) - minute + 1
    assert stats["labels"] + stats["skipped"]["rate"] == 6
    assert stats["labels"] == 2 or (minutes > 1 and stats["labels"] <= 2 * minutes)

    asyncio.run(forget())
    (tmp_path / "budget").mkdir()
    budget = policy_file(
        tmp_path / "budget", "{sample_rate: 1, floor: 1, daily_budget_usd: 0.000001}"
    )
    settings = settings_for(clean_sim, policy=budget, redis_url=redis_server.url)
    clean_sim.clear()
    with (
        serve_app(settings, deps_for(settings)) as one,
        serve_app(settings, deps_for(settings)) as two,
    ):
        ask(one, "budget first score=0.3")
        settled(one, 1)  # its shadow answer spent the day's budget: no judge is asked
        ask(two, "budget second score=0.3")
        ask(two, "budget third score=0.3")
        stats = settled(two, 3)
    assert stats["labels"] == 0 and stats["skipped"] == {"budget": 3}
    assert stats["spend_today_usd"]["shadow"] > 0 and stats["spend_today_usd"]["judge"] == 0
    assert len(chats(clean_sim)) == 4  # three client calls and one shadow call


def test_streams_cut_short_are_charged_as_before_and_never_compared(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1, floor: 1}"))
    with serve_app(settings, deps_for(settings)) as base:
        slow = {"role": "user", "content": "Tell a long story score=0.2 [[sim:slow=200]]"}
        with httpx.stream(
            "POST",
            base + "/v1/chat/completions",
            json={"model": "auto", "messages": [slow], "stream": True},
            timeout=10,
        ) as response:
            next(response.iter_lines())  # the client reads one event, then leaves

        def counted(error: str) -> bool:
            return f'error="{error}"' in httpx.get(base + "/metrics").text

        wait_until(lambda: counted("client_disconnected"), 10, "the cut stream counted")
        dropped = {"role": "user", "content": "Drop me score=0.2 [[sim:disconnect_after=3]]"}
        with httpx.stream(
            "POST",
            base + "/v1/chat/completions",
            json={"model": "auto", "messages": [dropped], "stream": True},
            timeout=10,
        ) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "upstream_error" in events[-2]
        wait_until(lambda: counted("upstream_interrupted"), 10, "the dropped stream counted")
        stats = learning_stats(base)
    assert stats["in_flight"] == 0 and stats["labels"] == 0 and not stats["failed"]
    assert [r.body["model"] for r in chats(clean_sim) if r.body] == [FLASH, FLASH]


def test_the_responses_door_is_compared_like_chat_completions(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1, floor: 1}"))
    deps = deps_for(settings)
    with serve_app(settings, deps) as base:
        whole = client(base).responses.create(model="auto", input="Plan a trip score=0.2")
        streamed = client(base).responses.create(
            model="auto", input="Plan a dinner score=0.3", stream=True
        )
        kinds = [event.type for event in streamed]
        settled(base, 2)
    assert whole.output_text and kinds[-1] == "response.completed"
    labels = stored_labels(deps)
    assert sorted(label["score"] for label in labels) == [0.2, 0.3]
    assert all(label["served"] == "flash" and len(label["verdicts"]) == 2 for label in labels)


def test_what_cannot_be_judged_fairly_is_skipped_and_counted(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1, floor: 1}"))
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }
    with serve_app(settings, deps_for(settings)) as base:
        ask(base, "Same again score=0.2")
        ask(base, "Same again score=0.2")  # a cache hit: nothing was generated
        ask(base, "Use a tool score=0.2", tools=[tool])
        ask(base, "Two answers score=0.2", n=2)
        client(base).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Quality please score=0.2"}],
            extra_headers={"x-flashpro-quality": "high"},  # a rule moves it to Pro
        )
        client(base).chat.completions.create(
            model="pro", messages=[{"role": "user", "content": "Pinned score=0.2"}]
        )
        stats = settled(base, 1)
    assert stats["labels"] == 1
    assert stats["skipped"] == {"cache_hit": 1, "tools": 1, "n": 1, "rule": 1}


def test_comparisons_past_max_in_flight_are_skipped(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    learning = "{sample_rate: 1, floor: 1, max_in_flight: 1}"
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, learning))
    httpx.post(clean_sim.url + "/_sim/faults", json={"model": PRO, "delay_ms": 3000, "count": 1})
    with serve_app(settings, deps_for(settings)) as base:
        ask(base, "First score=0.2")
        ask(base, "Second score=0.25")
        stats = learning_stats(base)
    assert stats["in_flight"] == 1 and stats["skipped"] == {"busy": 1}


def test_the_messages_door_is_compared_in_its_own_format(
    clean_sim: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(clean_sim, policy=policy_file(tmp_path, "{sample_rate: 1, floor: 1}"))
    deps = deps_for(settings)
    with serve_app(settings, deps) as base:
        api = anthropic.Anthropic(base_url=base, api_key="client-key", max_retries=0)
        asked = [{"role": "user", "content": "Write a haiku score=0.2"}]
        whole = api.messages.create(model="auto", max_tokens=500, messages=asked)
        streamed = [{"role": "user", "content": "Write a limerick score=0.3"}]
        with api.messages.stream(model="auto", max_tokens=500, messages=streamed) as events:
            final = events.get_final_message()
        settled(base, 2)
    assert whole.content and final.stop_reason == "end_turn"
    labels = stored_labels(deps)
    assert sorted(label["score"] for label in labels) == [0.2, 0.3]
    assert all(label["served"] == "flash" and len(label["verdicts"]) == 2 for label in labels)
    shadows = [r for r in clean_sim.requests() if r.path.endswith("/messages") and r.body]
    assert [r.body["model"] for r in shadows if r.body] == [FLASH, PRO, FLASH, PRO]
    assert len(judge_calls(clean_sim)) == 4  # the judge reads the chat view, in chat format
