"""The simulator's ground truth: how good each simulated answer is, and the simulated judge. Pure.

Opt-in (`SimulatorConfig(truth=...)`, `flashpro simulate-upstream --truth MODULE:FUNCTION`): the
truth is a function `(prompt_text) -> hidden difficulty in [0, 1]`, chosen by whoever runs the
simulator, so a test can build traffic on which a router's own notion of difficulty is wrong.
`prompt_text` is the text of the conversation's last user message.

**Answers.** With a truth, every text answer ends with a last line `[quality: good]` or
`[quality: poor]`. The chance of a good answer falls as the hidden difficulty `d` rises, less
steeply for stronger models (`good_chance`):

* Flash (a model id containing `flash`): `1 - d`;
* Pro: `1 - d / 4`; Pro at `reasoning_effort` max: `1 - d / 8`.

The draw is deterministic: one uniform number per conversation (a hash of its messages and the
configured seed, not of the model), and the answer is good when it is below the model's chance.
So the same body always gets the same quality, and the models are coupled: whenever Flash answers
one conversation well, Pro does too. JSON-mode answers and tool calls carry no marker.

**The judge.** When the last user message holds both `<answer_a>...</answer_a>` and
`<answer_b>...</answer_b>`, the simulator answers as a judge instead: it reads each answer's
quality marker (an answer without one counts as poor) and names the better one. With probability
`judge_noise` (drawn per judge request body) the verdict is wrong: the worse answer wins, or, when
both are alike, A or B (a coin) instead of the tie. The reply is a short rationale and a final
line `[[A]]`, `[[B]]` or `[[C]]` (a tie).
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from router.simulator.faults import SimError
from router.simulator.text import ChatMessage, ChatRequest, Choice, generate_choices, truncated

Truth = Callable[[str], float]
Strength = Literal["flash", "pro", "max"]
Verdict = Literal["A", "B", "C"]

GOOD: Final = "[quality: good]"
POOR: Final = "[quality: poor]"
# Chance of a good answer: 1 - d * this, by strength (module docstring).
_FALL: Final[Mapping[Strength, float]] = {"flash": 1.0, "pro": 0.25, "max": 0.125}
_ANSWER: Final = {
    tag: re.compile(rf"<answer_{tag}>(.*?)</answer_{tag}>", re.DOTALL) for tag in ("a", "b")
}
_MARKER: Final = re.compile(r"\[quality: (good|poor)\]")
_JUDGE_THOUGHT: Final = "Compare the two answers on correctness and completeness."
MAX_TRUTH_PROMPTS: Final = 10_000


@dataclass(frozen=True)
class GroundTruth:
    """The hidden difficulty and how the simulated models and judge act on it."""

    difficulty: Truth
    judge_noise: float = 0.1  # chance that a judgement is wrong
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.judge_noise <= 1:
            raise ValueError("judge_noise must be in [0, 1]")

    def hidden(self, prompt_text: str) -> float:
        """The truth function's value, clamped to [0, 1]."""
        return min(max(float(self.difficulty(prompt_text)), 0.0), 1.0)

    def expected(self, prompt_text: str) -> dict[Strength, float]:
        """Chance of a good answer per strength: the expected quality APGR is measured with."""
        d = self.hidden(prompt_text)
        return {strength: good_chance(strength, d) for strength in _FALL}

    def answer_quality(self, request: ChatRequest) -> bool:
        """Whether the model's answer to this conversation is good (deterministic)."""
        d = self.hidden(prompt_text(request.messages))
        draw = _uniform(self.seed, b"quality", _conversation(request.messages))
        return draw < good_chance(strength_of(request), d)

    def judge(self, request: ChatRequest) -> Verdict | None:
        """The judge's verdict, or None when the request is not a judge request."""
        text = prompt_text(request.messages)
        answers = [_ANSWER[tag].search(text) for tag in ("a", "b")]
        if answers[0] is None or answers[1] is None:
            return None
        good_a, good_b = (_is_good(m.group(1)) for m in answers if m is not None)
        draw = _uniform(self.seed, b"judge", _conversation(request.messages))
        wrong = draw < self.judge_noise
        if good_a == good_b:
            if not wrong:
                return "C"
            return "A" if draw < self.judge_noise / 2 else "B"
        better: Verdict = "A" if good_a else "B"
        return ("B" if better == "A" else "A") if wrong else better


def answers(
    truth: GroundTruth | None, request: ChatRequest, thinking: bool, max_output_tokens: int
) -> tuple[Choice, ...]:
    """The answers to a request; with a ground truth, a judge's verdict or answers marked with
    their quality."""
    if truth is not None and (verdict := truth.judge(request)) is not None:
        return (judge_choice(verdict, thinking, request.max_tokens),) * request.n
    choices = generate_choices(request, thinking=thinking, max_output_tokens=max_output_tokens)
    if truth is None or request.json_mode:
        return choices
    good = truth.answer_quality(request)
    return tuple(marked(choice, good) for choice in choices)


def good_chance(strength: Strength, difficulty: float) -> float:
    """The chance that a model of this strength answers a prompt of this difficulty well."""
    return 1.0 - min(max(difficulty, 0.0), 1.0) * _FALL[strength]


def strength_of(request: ChatRequest) -> Strength:
    if "flash" in request.model:
        return "flash"
    return "max" if request.effort == "max" else "pro"


def prompt_text(messages: Sequence[ChatMessage]) -> str:
    """What the truth function reads: the last user message's text ("" if none)."""
    return next((m.text for m in reversed(messages) if m.role == "user"), "")


def marked(choice: Choice, good: bool) -> Choice:
    """The answer with its quality marker as the last line (text answers only)."""
    if choice.tool_call is not None or choice.finish_reason != "stop":
        return choice
    return Choice(
        choice.reasoning,
        f"{choice.content}\n{GOOD if good else POOR}",
        None,
        choice.finish_reason,
    )


def judge_choice(verdict: Verdict, thinking: bool, max_tokens: int | None) -> Choice:
    """The judge's reply: a rationale and the verdict as its final line."""
    rationale = {
        "A": "Answer A is correct and complete; answer B falls short.",
        "B": "Answer B is correct and complete; answer A falls short.",
        "C": "Both answers are of the same quality.",
    }[verdict]
    reasoning = _JUDGE_THOUGHT if thinking else None
    return truncated(reasoning, f"{rationale}\n[[{verdict}]]", None, max_tokens)


def load_truth(spec: str) -> Truth:
    """Import `MODULE:FUNCTION` (the `--truth` flag)."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    function = getattr(importlib.import_module(module_name), name, None)
    if not callable(function):
        raise ValueError(f"{spec!r} is not a function")
    return function  # type: ignore[no-any-return]


def hashed_difficulty(prompt_text: str) -> float:
    """A ready-made truth: a hidden difficulty spread evenly over [0, 1] by the text's hash."""
    digest = hashlib.blake2b(prompt_text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _is_good(answer: str) -> bool:
    markers = _MARKER.findall(answer)
    return bool(markers) and markers[-1] == "good"


def _conversation(messages: Sequence[ChatMessage]) -> bytes:
    return b"\0".join(m.canonical() for m in messages)


def _uniform(seed: int, purpose: bytes, data: bytes) -> float:
    key = seed.to_bytes(8, "big", signed=True) + purpose
    digest = hashlib.blake2b(data, digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / 2**64


def truth_json(truth: GroundTruth | None, body: object) -> dict[str, object]:
    """`POST /_sim/truth` with `{"prompts": [...]}`: each prompt's hidden difficulty and chance
    of a good answer per strength, in order."""
    if truth is None:
        raise SimError(404, "This simulator has no ground truth (start it with --truth)")
    prompts = body.get("prompts") if isinstance(body, dict) else None
    if (
        not isinstance(prompts, list)
        or len(prompts) > MAX_TRUTH_PROMPTS
        or not all(isinstance(p, str) for p in prompts)
    ):
        raise SimError(422, f"Expected {{'prompts': [at most {MAX_TRUTH_PROMPTS} strings]}}")
    return {"truth": [{"difficulty": truth.hidden(p), **truth.expected(p)} for p in prompts]}
