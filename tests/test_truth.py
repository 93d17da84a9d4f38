"""The simulator's ground truth: answer quality falls with hidden difficulty, the judge reads it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from router.cli import main
from router.simulator.command import add_simulator_arguments, simulator_config
from router.simulator.server import (
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)
from router.simulator.text import parse_chat_request
from router.simulator.truth import (
    GOOD,
    POOR,
    GroundTruth,
    Strength,
    answers,
    good_chance,
    hashed_difficulty,
    load_truth,
)

FLASH = "deepseek-v4-flash"
PRO = "deepseek-v4-pro"
KEY = "sk-truth-test"
VERDICT = re.compile(r"\[\[([ABC])\]\]\s*$")


def fixed(difficulty: float) -> GroundTruth:
    return GroundTruth(lambda _text: difficulty, judge_noise=0.0)


def body(prompt: str, model: str = FLASH, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def quality(truth: GroundTruth, prompt: str, model: str = FLASH, **extra: Any) -> bool:
    return truth.answer_quality(parse_chat_request(body(prompt, model, **extra)))


def judge_prompt(first: str, second: str) -> str:
    return (
        "Which answer is better?\n<question>q</question>\n"
        f"<answer_a>{first}</answer_a>\n<answer_b>{second}</answer_b>"
    )


def verdict(truth: GroundTruth, first: str, second: str, model: str = PRO) -> str | None:
    return truth.judge(parse_chat_request(body(judge_prompt(first, second), model)))


def test_good_chance_falls_with_difficulty_and_stronger_models_fall_less() -> None:
    for d in (0.0, 0.3, 0.7, 1.0):
        assert good_chance("flash", d) <= good_chance("pro", d) <= good_chance("max", d)
    assert good_chance("flash", 0.0) == good_chance("pro", 0.0) == 1.0
    assert good_chance("flash", 0.9) < good_chance("flash", 0.2)
    assert good_chance("pro", 0.9) < good_chance("pro", 0.2)
    assert good_chance("flash", 5.0) == 0.0  # clamped


@pytest.mark.parametrize("difficulty", [0.2, 0.6, 0.9])
def test_answer_quality_rates_follow_the_chances(difficulty: float) -> None:
    truth = fixed(difficulty)
    prompts = [f"question number {i}" for i in range(3000)]
    flash = [quality(truth, p) for p in prompts]
    pro = [quality(truth, p, PRO) for p in prompts]
    top = [quality(truth, p, PRO, reasoning_effort="max") for p in prompts]
    strengths: tuple[Strength, ...] = ("flash", "pro", "max")
    for draws, strength in zip((flash, pro, top), strengths, strict=True):
        rate = sum(draws) / len(draws)
        assert abs(rate - good_chance(strength, difficulty)) < 0.03, (strength, rate)
    # coupled draws: Pro answers well whenever Flash does
    assert all(p for f, p in zip(flash, pro, strict=True) if f)


def test_answer_quality_is_a_function_of_the_body() -> None:
    truth = GroundTruth(hashed_difficulty)
    prompts = [f"prompt {i}" for i in range(200)]
    first = [quality(truth, p) for p in prompts]
    assert first == [quality(truth, p) for p in prompts]
    assert 0 < sum(first) < len(first)  # both outcomes occur
    reseeded = GroundTruth(hashed_difficulty, seed=7)
    assert [quality(reseeded, p) for p in prompts] != first


def test_answers_end_with_the_quality_marker_except_json_and_tool_calls() -> None:
    truth = fixed(0.5)
    for prompt in ("alpha", "beta", "gamma"):
        request = parse_chat_request(body(prompt))
        (choice,) = answers(truth, request, thinking=False, max_output_tokens=50)
        marker = GOOD if truth.answer_quality(request) else POOR
        assert choice.content.split("\n")[-1] == marker
        (plain,) = answers(None, request, thinking=False, max_output_tokens=50)
        assert choice.content == f"{plain.content}\n{marker}"
    json_request = parse_chat_request(
        body("reply in json", response_format={"type": "json_object"})
    )
    (json_choice,) = answers(truth, json_request, thinking=False, max_output_tokens=50)
    assert "[quality:" not in json_choice.content
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    (call,) = answers(
        truth, parse_chat_request(body("x", tools=[tool])), thinking=False, max_output_tokens=50
    )
    assert call.tool_call is not None and call.content == ""


def test_judge_prefers_the_better_marked_answer_without_noise() -> None:
    truth = fixed(0.5)
    assert verdict(truth, f"text\n{GOOD}", f"text\n{POOR}") == "A"
    assert verdict(truth, f"text\n{POOR}", f"text\n{GOOD}") == "B"
    assert verdict(truth, f"x\n{GOOD}", f"y\n{GOOD}") == "C"
    assert verdict(truth, f"x\n{POOR}", f"y\n{POOR}") == "C"
    assert verdict(truth, "no marker at all", f"y\n{GOOD}") == "B"  # no marker counts as poor
    plain = parse_chat_request(body("just a question <answer_a>only one</answer_a>"))
    assert truth.judge(plain) is None


def test_judge_noise_flips_that_share_of_verdicts() -> None:
    truth = GroundTruth(lambda _text: 0.5, judge_noise=0.2)
    wrong = ties_broken = 0
    n = 2000
    for i in range(n):
        wrong += verdict(truth, f"{i}\n{GOOD}", f"{i}\n{POOR}") != "A"
        ties_broken += verdict(truth, f"{i}\n{GOOD}", f"{i}b\n{GOOD}") != "C"
    assert abs(wrong / n - 0.2) < 0.03
    assert abs(ties_broken / n - 0.2) < 0.03


def test_load_truth_reads_module_and_function() -> None:
    assert load_truth("router.simulator.truth:hashed_difficulty") is hashed_difficulty
    for bad in ("no_colon", "router.simulator.truth:GOOD", ":f", "router.simulator.truth:"):
        with pytest.raises(ValueError):
            load_truth(bad)
    with pytest.raises(ValueError):
        GroundTruth(hashed_difficulty, judge_noise=1.5)


def test_cli_truth_flags_build_the_ground_truth() -> None:
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    args = parser.parse_args(
        ["--truth", "router.simulator.truth:hashed_difficulty", "--judge-noise", "0.25"]
    )
    truth = simulator_config(args).truth
    assert truth is not None and truth.judge_noise == 0.25
    assert truth.difficulty is hashed_difficulty
    assert simulator_config(parser.parse_args([])).truth is None


def test_cli_rejects_a_truth_it_cannot_import(capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("no_colon", "no_such_module_here:f", "router.simulator.truth:GOOD"):
        assert main(["simulate-upstream", "--truth", spec, "--port", "0"]) == 2
        assert f"--truth {spec}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    truth = GroundTruth(hashed_difficulty, judge_noise=0.0)
    config = SimulatorConfig(profiles=default_profiles(), speed=0, api_key=KEY, truth=truth)
    with start_in_thread(config) as running:
        yield running


def test_simulated_answers_and_judge_over_http(sim: RunningSimulator) -> None:
    client = openai.OpenAI(base_url=sim.url, api_key=KEY, max_retries=0)
    prompt = "Explain why the sky is blue."

    def ask(model: str, text: str, **extra: Any) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], **extra
        )
        return reply.choices[0].message.content or ""

    flash, pro = ask(FLASH, prompt), ask(PRO, prompt)
    assert flash.split("\n")[-1] in (GOOD, POOR) and pro.split("\n")[-1] in (GOOD, POOR)
    assert ask(FLASH, prompt) == flash  # same body, same answer and quality
    streamed = client.chat.completions.create(
        model=FLASH, messages=[{"role": "user", "content": prompt}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == flash
    expected = (
        "C" if flash.endswith(GOOD) == pro.endswith(GOOD) else "A" if pro.endswith(GOOD) else "B"
    )
    judged = ask(PRO, judge_prompt(pro, flash))
    match = VERDICT.search(judged)
    assert match is not None and match.group(1) == expected, judged

    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        figures = http.post("/_sim/truth", json={"prompts": [prompt, "hi"]}).json()["truth"]
        assert figures[0]["difficulty"] == pytest.approx(hashed_difficulty(prompt))
        assert figures[0]["flash"] == pytest.approx(good_chance("flash", figures[0]["difficulty"]))
        assert figures[1]["pro"] >= figures[1]["flash"]
        assert http.post("/_sim/truth", json={"prompts": "hi"}).status_code == 422
        message = http.post(
            "/anthropic/v1/messages",
            json={
                "model": FLASH,
                "max_tokens": 2000,
                "messages": [{"role": "user", "content": prompt}],
            },
        ).json()
        text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
        assert text.split("\n")[-1] in (GOOD, POOR)


def test_simulator_without_truth_answers_plainly_and_has_no_truth_endpoint() -> None:
    config = SimulatorConfig(profiles=default_profiles(), speed=0)
    with start_in_thread(config) as plain, httpx.Client(base_url=plain.url) as http:
        assert http.post("/_sim/truth", json={"prompts": ["x"]}).status_code == 404
        reply = http.post("/v1/chat/completions", json=body(judge_prompt(GOOD, POOR))).json()
        assert "[[" not in reply["choices"][0]["message"]["content"]
