import json
import time
from typing import Any

from router.routing.features import (
    DENSE_LABELS,
    DENSE_NAMES,
    HASH_BUCKETS,
    N_DENSE,
    N_FEATURES,
    USER_HEAD_CHARS,
    USER_TAIL_CHARS,
    bounded_text,
    count_cues,
    extract,
    new_work,
    normalise,
    text_features,
    tokens,
)
from router.schemas import ChatRequest, Message
from tests.conftest import ROOT

# Request shapes the proxy sees: multi-part content, tools, tool results, empty turns.
VARIED: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Explain monads."}]}]},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Fix the failing test in parser.py"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "function": {"name": "read_file", "arguments": '{"p": "x"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "def parse(s):\n    return s[1:]"},
        ],
        "tools": [{"type": "function", "function": {"name": "read_file"}}],
    },
    {"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "日本語で説明してください。量子コンピュータとは"}]},
]


def chat(*messages: tuple[str, str], **extra: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], **extra}
    )


def routing_prompts(limit: int = 300) -> list[str]:
    """Prompts of the routing data when it is there (the shared data set), else a few built-ins."""
    path = ROOT.parent / "shared" / "data" / "routing" / "dev.jsonl"
    if not path.exists():
        return ["Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:", "What is 17 * 23?"]
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return [json.loads(line)["prompt"] for line in lines[:limit]]


def test_features_are_deterministic_and_in_range() -> None:
    request = chat(("user", "Prove that the sum of two even numbers is even."))
    first, second = extract(request), extract(request)
    assert first.indices == second.indices and first.values == second.values
    assert all(0 <= i < N_FEATURES for i in first.indices)
    assert first.indices[-N_DENSE:] == list(range(HASH_BUCKETS, N_FEATURES))
    assert set(DENSE_LABELS) == set(DENSE_NAMES)


def test_only_the_new_work_is_read_not_the_fixed_context() -> None:
    plain = extract(chat(("user", "thanks!")))
    agent = extract(
        chat(
            ("system", "You are a coding agent. Follow the repository rules. " * 500),
            ("user", "Refactor the scheduler to use a priority queue."),
            ("assistant", "Done: the scheduler now uses heapq."),
            ("user", "thanks!"),
            tools=[{"type": "function", "function": {"name": f"tool_{i}"}} for i in range(12)],
        )
    )
    assert (plain.buckets, plain.dense) == (agent.buckets, agent.dense)
    assert agent.prompt_chars > 20_000  # the token estimate still counts the whole prompt


def test_tool_results_after_the_latest_user_message_are_new_work() -> None:
    messages = [Message.model_validate(m) for m in VARIED[1]["messages"]]
    text = new_work(messages)
    assert "Fix the failing test" in text and "def parse" in text and "terse" not in text


def test_wording_that_does_not_change_difficulty_does_not_change_features() -> None:
    base = text_features("what is 5 times 7")
    for variant in (
        "What is 5 times 7?",
        "WHAT IS 5 TIMES 7 ?!",
        "  what   is 5\ttimes 7 ...",
        "Please, what is 5 times 7?",
        "Hi, please: what is 5 times 7?",
        "Hello! Could you please what is 5 times 7",
        "what is 85 times 1234",
    ):
        features = text_features(variant)
        assert features.buckets == base.buckets, variant
        assert features.cues == base.cues, variant


def test_numbers_read_as_their_magnitude() -> None:
    assert tokens(normalise("3 + 41 = 1234")) == [b"0", b"+", b"0", b"=", b"0"]
    assert tokens(normalise("pay 1,000 or 3.2 now")) == [b"pay", b"0", b"or", b"0", b"now"]
    assert tokens(normalise("pay 1,000,000 now")) == [b"pay", b"00", b"now"]


def test_a_greeting_alone_is_kept_as_the_request() -> None:
    assert normalise("Hello!") == "hello"
    assert text_features("hello").cue("chit_chat") == 1


def test_named_cues_are_counted() -> None:
    features = text_features("Prove that $x^2 \\geq 0$ for all real numbers x.")
    assert features.cue("proof") == 1 and features.cue("math_notation") >= 3
    assert features.cue("olympiad") >= 2
    code = text_features("```go\nfunc f() { mu.Lock() }\n```\nThere is a deadlock and a race.")
    assert code.cue("code_block") >= 2 and code.cue("concurrency") >= 2
    assert text_features("A. 4\nB. 6\nC. 7").cue("choices") == 3
    assert sum(count_cues("prove that a race exists")) == 2


def test_bounded_text_keeps_head_and_tail_only() -> None:
    message = Message(role="user", content="a" * 50 + "b" * 50)
    text = bounded_text(message, 10, 5)
    assert text == "a" * 10 + "\n" + "b" * 5


def test_four_megabyte_prompt_costs_no_more_than_its_windows() -> None:
    huge = chat(("user", "The integral of x^2 from 0 to 3 is 9. Prove it. " * 90_000))
    extract(huge)
    start = time.perf_counter()
    features = extract(huge)
    assert time.perf_counter() - start < 0.05
    assert features.prompt_chars > 4_000_000
    window = text_features("x" * (USER_HEAD_CHARS + USER_TAIL_CHARS + 1))
    assert window.prompt_chars == USER_HEAD_CHARS + USER_TAIL_CHARS + 1


def test_every_request_shape_extracts() -> None:
    for body in VARIED:
        features = extract(ChatRequest.model_validate({"model": "auto", **body}))
        assert len(features.dense) == N_DENSE
