"""The shipped classifier under the default policy: obvious pairs, wording stability, agents."""

import json
from functools import cache
from typing import Any

import pytest

from router.routing.classify import Assessment, DifficultyClassifier, load_classifier
from router.routing.decide import decide, resolve_thresholds
from router.routing.decision import Thresholds, facts_of
from router.routing.policy import Policy, load_policy
from router.schemas import ChatRequest
from tests.conftest import ROOT

PAIRS = ROOT / "tests" / "data" / "difficulty_pairs.jsonl"
TRAINING_ANCHORS = (ROOT / "data" / "everyday.jsonl", ROOT / "data" / "expert.jsonl")
RANK = {"flash": 0, "pro": 1, "pro-max": 2}


@cache
def shipped() -> tuple[DifficultyClassifier, Policy, dict[str, Thresholds]]:
    classifier = load_classifier()
    policy, _ = load_policy(None)
    return classifier, policy, resolve_thresholds(policy, classifier.threshold_for_share)


def routed(body: dict[str, Any]) -> tuple[Assessment, str]:
    classifier, policy, thresholds = shipped()
    request = ChatRequest.model_validate({"model": "auto", **body})
    assessment = classifier.assess(request)
    decision = decide(
        policy, thresholds, facts_of(request, {}, assessment.prompt_tokens), assessment
    )
    return assessment, decision.tier


def ask(text: str) -> tuple[Assessment, str]:
    return routed({"messages": [{"role": "user", "content": text}]})


def pairs() -> list[dict[str, str]]:
    lines = PAIRS.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def test_the_pair_suite_is_large_varied_and_not_trained_on() -> None:
    suite = pairs()
    assert len(suite) >= 80 and len({p["category"] for p in suite}) >= 10
    anchors = {
        json.loads(line)["prompt"].lower()
        for path in TRAINING_ANCHORS
        for line in path.read_text(encoding="utf-8").split("\n")
        if line.strip()
    }
    assert not anchors & {p[side].lower() for p in suite for side in ("easy", "hard")}


@pytest.mark.parametrize("pair", pairs(), ids=lambda p: p["category"])
def test_the_hard_side_scores_higher_and_goes_up_a_tier(pair: dict[str, str]) -> None:
    easy, easy_tier = ask(pair["easy"])
    hard, hard_tier = ask(pair["hard"])
    assert hard.score > easy.score, (easy.score, hard.score)
    assert easy_tier == "flash", easy
    assert RANK[hard_tier] >= RANK["pro"], hard


TEMPLATES = (
    "Question {n}: what is {n} times 7?",
    "What is {n} plus {n}?",
    "How many minutes are in {n} hours?",
    "Write a limerick about the number {n}.",
    "Prove that {n}^2 + {n} is even.",
)


@pytest.mark.parametrize("template", TEMPLATES)
def test_numbers_do_not_move_a_request_between_tiers(template: str) -> None:
    tiers = {ask(template.format(n=n))[1] for n in range(1, 100)}
    assert len(tiers) == 1, tiers


REWORDINGS = (
    ("Translate 'see you soon' into Dutch.", "Hi! Please translate 'see you soon' into Dutch"),
    ("What is the capital of Chile?", "  WHAT IS THE CAPITAL OF CHILE ??? "),
    ("Summarise this: the shop closes at noon.", "Can you summarise this: the shop closes at noon"),
    (
        "Prove that every tree with n vertices has n - 1 edges.",
        "Hello, could you prove that every tree with n vertices has n-1 edges?!",
    ),
    (
        "Alice has 3 apples and gives Bob 2. How many are left?",
        "Maria has 3 apples and gives Tom 2. How many are left?",
    ),
)


@pytest.mark.parametrize("plain,reworded", REWORDINGS)
def test_wording_that_keeps_the_difficulty_keeps_the_tier(plain: str, reworded: str) -> None:
    first, first_tier = ask(plain)
    second, second_tier = ask(reworded)
    assert first_tier == second_tier
    assert abs(first.score - second.score) < 0.05


SYSTEM_PROMPT = " ".join(
    f"Rule {i}: when editing the repository, keep functions small, run the tests, explain the "
    "change, never touch generated files, and prefer the standard library."
    for i in range(6000 // 22)
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ')} in the workspace",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name in (
        "read_file",
        "write_file",
        "list_files",
        "run_tests",
        "search_code",
        "git_diff",
        "git_commit",
        "run_shell",
        "open_url",
        "format_code",
        "lint_code",
        "ask_user",
    )
]


def agent_turn(latest: str) -> dict[str, Any]:
    earlier = [
        {"role": "user", "content": "Add a --verbose flag to the CLI."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "import argparse\n" * 40},
        {"role": "assistant", "content": "Added the flag and a test; all tests pass."},
    ]
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            *earlier,
            {"role": "user", "content": latest},
        ],
        "tools": TOOLS,
    }


def test_an_agents_fixed_context_does_not_lift_small_turns() -> None:
    assert len(SYSTEM_PROMPT.split()) >= 6000
    for latest in ("thanks!", "list the files"):
        assessment, tier = routed(agent_turn(latest))
        assert tier == "flash", (latest, assessment)


def test_an_agent_asking_for_a_subtle_concurrency_fix_goes_to_pro() -> None:
    latest = (
        "The job queue loses jobs under load. Two workers call `claim()` at the same time: each "
        "reads the row, sees status 'ready', and writes status 'running', so both run it and one "
        "result overwrites the other, and sometimes a crash leaves a job 'running' forever. Find "
        "the race condition, fix it with an atomic compare-and-set or row lock, and make stuck "
        "jobs recoverable without running any job twice."
    )
    assessment, tier = routed(agent_turn(latest))
    assert tier == "pro", assessment


def test_a_capped_short_answer_stays_on_flash_whatever_the_text() -> None:
    bug = (
        "tests/test_queue.py::test_parallel_workers fails now and then: a task runs twice or "
        "never completes. Find the race condition in the worker pool and fix it."
    )
    title = {
        "messages": [
            {"role": "system", "content": "Write a 3-6 word title for this conversation."},
            {"role": "user", "content": bug},
        ],
        "max_tokens": 60,
    }
    assessment, tier = routed(title)
    assert tier == "flash", assessment
    assert assessment.reasons[0].startswith("short answer asked (60 tokens)")
    assert RANK[ask(bug)[1]] >= RANK["pro"]
