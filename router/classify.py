"""Score how much a request needs a stronger tier: the `Classifier` interface and its implementations. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.schemas import ChatRequest


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the classifier says about one request."""

    score: float  # difficulty in [0, 1]; higher = more need for a stronger tier
    reasoning: bool  # math, proofs or hard code detected: candidates for max reasoning
    prompt_tokens: int  # estimated size of the whole prompt


class Classifier(Protocol):
    def assess(self, request: ChatRequest) -> Assessment: ...

    def threshold_for_share(self, share: float) -> float:
        """The score above which `share` of calibration traffic lies (policy `shares:`)."""
        ...


def estimate_tokens(request: ChatRequest) -> int:
    """Cheap prompt-size estimate (about four characters a token); O(messages), not O(text)."""
    chars = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += sum(len(part.text) for part in content if part.text)
    return chars // 4 + 4 * len(request.messages)


@dataclass(frozen=True)
class FixedScoreClassifier:
    """Always the same score: for tests and for policies that route on rules alone."""

    score: float = 0.0
    reasoning: bool = False

    def assess(self, request: ChatRequest) -> Assessment:
        return Assessment(self.score, self.reasoning, estimate_tokens(request))

    def threshold_for_share(self, share: float) -> float:
        return 1.0 - share  # scores read as uniform on [0, 1]


def load_classifier(path: object = None) -> Classifier:
    """Placeholder until the trained artifact lands: a fixed low score."""
    return FixedScoreClassifier()
