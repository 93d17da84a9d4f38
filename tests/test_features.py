import time

from router.features import HASH_BUCKETS, N_DENSE, N_FEATURES, bounded_text, extract
from router.schemas import ChatRequest, Message


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
