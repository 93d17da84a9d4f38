"""The decision types shared by decide and constrain: request facts, score steps, the outcome.
Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router.schemas import ChatRequest


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What rules may look at, taken from a parsed request."""

    model: str
    tools: bool = False
    json_output: bool = False
    stream: bool = False
    prompt_tokens: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    images: bool = False  # a message carries an image part

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def facts_of(request: ChatRequest, headers: Mapping[str, str], prompt_tokens: int) -> RequestFacts:
    """The facts of a parsed request; `headers` with lower-case names."""
    return RequestFacts(
        model=request.model,
        tools=bool(request.tools),
        json_output=request.wants_json(),
        stream=request.stream,
        prompt_tokens=prompt_tokens,
        headers=headers,
        images=request.has_images(),
    )


@dataclass(frozen=True, slots=True)
class Thresholds:
    """An alias's score steps, ascending: the highest step the score reaches picks the tier."""

    default_tier: str
    steps: tuple[tuple[str, float], ...]

    def tier_for(self, score: float) -> tuple[str, str]:
        """The tier for a score, and the threshold that decided it (for x-flashpro-rule)."""
        chosen, why = self.default_tier, f"threshold:{self.default_tier}"
        for tier, minimum in self.steps:
            if score >= minimum:
                chosen, why = tier, f"threshold:{tier}>={minimum:.4g}"
        return chosen, why


@dataclass(frozen=True, slots=True)
class Decision:
    """The routing outcome; drives the upstream call, the headers, the log and `route`."""

    alias: str | None
    tier: str
    model: str
    thinking: str
    reasoning_effort: str | None
    score: float
    rule: str
    reason: str
