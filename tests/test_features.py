import json
import math
import re
import time
import zlib
from typing import Any, NamedTuple

import pytest

from router.routing.features import (
    _CODE_WORDS,
    _PROOF_WORDS,
    _ZERO_DIGITS,
    HASH_BUCKETS,
    HISTORY_CHARS,
    HISTORY_TURNS,
    N_DENSE,
    N_FEATURES,
    SIGNAL_CHARS,
    SYSTEM_CHARS,
    TOOLS_CHARS,
    USER_HEAD_CHARS,
    USER_TAIL_CHARS,
    Features,
    bounded_text,
    extract,
    message_chars,
)
from router.schemas import ChatRequest, Message
from tests.conftest import ROOT


def chat(*messages: tuple[str, str], **extra: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], **extra}
    )


def test_features_are_deterministic_and_in_range() -> None:
    request = chat(("user", "Prove that the sum of two even numbers is even."))
    first, second = extract(request), extract(request)
    assert first.indices == second.indices and first.values == second.values
    assert all(0 <= i < N_FEATURES for i in first.indices)
    assert first.indices[-N_DENSE:] == list(range(HASH_BUCKETS, N_FEATURES))


def test_whole_request_contributes_not_only_last_message() -> None:
    plain = extract(chat(("user", "Summarise this.")))
    with_system = extract(chat(("system", "You are a tax lawyer."), ("user", "Summarise this.")))
    with_tools = extract(
        chat(
            ("user", "Summarise this."),
            tools=[{"type": "function", "function": {"name": "lookup_statute"}}],
            response_format={"type": "json_object"},
        )
    )
    assert set(plain.indices) < set(with_system.indices)
    assert set(plain.indices) < set(with_tools.indices)
    dense_plain, dense_tools = plain.dense, with_tools.dense
    assert dense_tools[5] > dense_plain[5]  # tools
    assert dense_tools[6] == 1.0 and dense_plain[6] == 0.0  # JSON output requested


def test_code_math_and_choice_signals() -> None:
    code = extract(chat(("user", "```python\ndef f(x):\n    return x;\n```\nDebug this.")))
    maths = extract(chat(("user", "Solve x^2 + 3*x = 10 and prove the roots are 2 and -5.")))
    choice = extract(chat(("user", "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:")))
    assert code.code_marks >= 3 and maths.math_marks >= 3 and maths.proof_words >= 1
    assert choice.dense[10] > 0 and choice.dense[11] == 1.0


def test_bounded_text_keeps_head_and_tail_only() -> None:
    message = Message(role="user", content="a" * 1000 + "b" * 1000)
    text = bounded_text(message, 10, 5)
    assert text == "a" * 10 + "\n" + "b" * 5


def test_four_megabyte_prompt_is_cheap() -> None:
    huge = chat(("user", "word " * 800_000 + "prove it"))
    extract(huge)
    start = time.perf_counter()
    features = extract(huge)
    assert time.perf_counter() - start < 0.05
    assert features.prompt_chars > 4_000_000


# The features written the plainest way: one token at a time, every pair hashed from the full
# CRCs, the regexes anchored at line starts. `extract` must give exactly these indices (in this
# order) and values: the shipped model was trained on them.
_PLAIN_TOKEN = re.compile(rb"[a-z]+|0+|[\x80-\xff]{1,6}|[^\sa-z0\x80-\xff]")
_PLAIN_NUMBER = re.compile(rb"0+(?:[.,]0+)?")
_PLAIN_CHOICE = re.compile(rb"^[ \t]*\(?[A-Ha-h][.)]\s", re.MULTILINE)
DATA = ROOT.parent / "shared" / "data" / "routing"  # beside the checkout, as in the Makefile


class PlainFeatures(NamedTuple):
    indices: list[int]
    values: list[float]
    dense: tuple[float, ...]
    code_marks: int
    math_marks: int
    proof_words: int
    numbers: int
    prompt_chars: int


def plain_tokens(text: str) -> list[bytes]:
    return _PLAIN_TOKEN.findall(text.lower().encode("utf-8", "ignore").translate(_ZERO_DIGITS))


def plain_hash(tokens: list[bytes], namespace: bytes, buckets: set[int], pairs: bool) -> None:
    seed = zlib.crc32(namespace)
    prev = 0
    for token in tokens:
        h = zlib.crc32(token, seed)
        buckets.add(h & (HASH_BUCKETS - 1))
        if pairs and prev:
            buckets.add(((prev * 0x9E3779B1) ^ h) & (HASH_BUCKETS - 1))
        prev = h


def plain_extract(request: ChatRequest) -> PlainFeatures:
    messages = request.messages
    users = [i for i, message in enumerate(messages) if message.role == "user"]
    last = users[-1] if users else len(messages) - 1
    user = bounded_text(messages[last], USER_HEAD_CHARS, USER_TAIL_CHARS)
    tokens = plain_tokens(user)
    buckets: set[int] = set()
    plain_hash(tokens, b"u", buckets, pairs=True)
    system_chars = 0
    for message in messages[:last]:
        if message.role in ("system", "developer"):
            system_chars += message_chars(message)
            plain_hash(plain_tokens(bounded_text(message, 0, SYSTEM_CHARS)), b"s", buckets, False)
    for message in messages[max(0, last - HISTORY_TURNS) : last]:
        if message.role not in ("system", "developer"):
            plain_hash(plain_tokens(bounded_text(message, 0, HISTORY_CHARS)), b"h", buckets, False)
    tools = request.tools or []
    if tools:
        names = " ".join(str(tool.get("function", tool))[:200] for tool in tools[:64])
        plain_hash(plain_tokens(names[:TOOLS_CHARS]), b"t", buckets, False)
    raw = user[:SIGNAL_CHARS].encode("utf-8", "ignore")
    window = max(len(raw), 1)
    zeroed = raw.translate(_ZERO_DIGITS)
    total_chars = sum(message_chars(m) for m in messages)
    distinct = set(tokens)
    code = 3 * raw.count(b"```") + len(distinct & _CODE_WORDS) + raw.count(b";") // 2
    maths = sum(raw.count(bytes([b])) for b in b"=^<>+*/\\$")
    proof = len(distinct & _PROOF_WORDS)
    numbers = len(_PLAIN_NUMBER.findall(zeroed))
    dense = (
        1.0,
        math.log1p(message_chars(messages[last])) / 8.0,
        math.log1p(total_chars) / 8.0,
        math.log1p(system_chars) / 8.0,
        math.log1p(len(messages) - 1),
        math.log1p(len(tools)),
        1.0 if request.wants_json() else 0.0,
        math.log1p(code),
        math.log1p(maths),
        math.log1p(numbers),
        math.log1p(len(_PLAIN_CHOICE.findall(raw))),
        1.0 if raw.rstrip().endswith(b"Answer:") else 0.0,
        math.log1p(raw.count(b"?")),
        math.log1p(proof),
        math.log1p(raw.count(b"\n")),
        zeroed.count(b"0") / window,
        sum(raw.count(bytes([b])) for b in range(ord("A"), ord("Z") + 1)) / window,
    )
    norm = 1.0 / math.sqrt(max(len(buckets), 1))
    indices = [*buckets, *range(HASH_BUCKETS, N_FEATURES)]
    values = [norm] * len(buckets) + list(dense)
    return PlainFeatures(indices, values, dense, code, maths, proof, numbers, total_chars)


def as_plain(features: Features) -> PlainFeatures:
    return PlainFeatures(
        features.indices,
        features.values,
        features.dense,
        features.code_marks,
        features.math_marks,
        features.proof_words,
        features.numbers,
        features.prompt_chars,
    )


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"q": 1}}}
VARIED: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "Question 17: what is the capital of France?"}]},
    {"messages": [{"role": "user", "content": "aryzy aryzy word aryzy"}]},  # a word in bucket 0
    {"messages": [{"role": "user", "content": "  \t1,5 and 2.50.7 or 3,4.5 0 00.\n \n  "}]},
    {
        "messages": [
            {"role": "user", "content": "A) one\n  (b) two\nC.\nD.\n(e)\nF.x\n\tG) 7\nAnswer: "}
        ]
    },
    {"messages": [{"role": "user", "content": "日本語の質問です。東京はどこ? Ünïcödé İstanbul"}]},
    {
        "messages": [
            {"role": "system", "content": "No user turn"},
            {"role": "assistant", "content": "x"},
        ]
    },
    {"messages": [{"role": "user", "content": "```c\n#include <x>\nconst int a=1;;\n``` Debug"}]},
    {
        "messages": [
            {"role": "system", "content": "You are a careful TAX lawyer. " * 80},
            {"role": "developer", "content": "Answer in JSON."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hi! How can I help? " * 40},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Prove it. " * 500},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                    {"type": "text", "text": "Derive the integral of x^2 step by step. " * 50},
                ],
            },
            {"role": "assistant", "content": None},
        ],
        "tools": [WEATHER] * 70,
        "response_format": {"type": "json_object"},
    },
]


@pytest.mark.parametrize("body", VARIED)
def test_extract_equals_plain_definition(body: dict[str, Any]) -> None:
    request = ChatRequest.model_validate({"model": "auto", **body})
    assert as_plain(extract(request)) == plain_extract(request)


def routing_prompts() -> list[str]:
    """Every prompt of the routing dev split beside the checkout (skips if it is absent)."""
    path = DATA / "dev.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["prompt"] for line in lines if line.strip()]


def test_extract_equals_plain_definition_on_routing_data() -> None:
    for prompt in routing_prompts():
        request = ChatRequest(model="auto", messages=[{"role": "user", "content": prompt}])
        assert as_plain(extract(request)) == plain_extract(request), prompt
