"""Score how much a request needs a stronger tier: the `Classifier` interface and its implementations.

Pure, except `LinearClassifier.save` and `load_classifier`, which write and read the model
artifact (an NPZ of plain arrays plus a JSON header, read with `allow_pickle=False`). Scoring
needs numpy only; the model is fitted by `router.train`, the one module that uses scikit-learn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from operator import mul
from pathlib import Path
from typing import IO, Literal, Protocol

import numpy as np

from router.routing.features import (
    FEATURES_VERSION,
    HASH_BUCKETS,
    N_FEATURES,
    Features,
    extract,
    message_chars,
)
from router.schemas import ChatRequest

ARTIFACT_FORMAT = "flashpro-linear-v1"
SHIPPED_ARTIFACT = "data/classifier.npz"
Link = Literal["logistic", "gain"]
# Up to this many buckets, summing their weights one by one in Python beats numpy, whose fixed
# cost per call (building an index array, gathering) is a few microseconds.
_PYTHON_SUM_MAX = 48


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
    return _token_estimate(sum(map(message_chars, request.messages)), len(request.messages))


def _token_estimate(chars: int, messages: int) -> int:
    """The estimate for a prompt of `chars` characters in `messages` messages."""
    return chars // 4 + 4 * messages


@dataclass(frozen=True)
class FixedScoreClassifier:
    """Always the same score: for tests and for policies that route on rules alone."""

    score: float = 0.0
    reasoning: bool = False

    def assess(self, request: ChatRequest) -> Assessment:
        return Assessment(self.score, self.reasoning, estimate_tokens(request))

    def threshold_for_share(self, share: float) -> float:
        return 1.0 - share  # scores read as uniform on [0, 1]


@dataclass(frozen=True)
class Calibration:
    """Score quantiles on a calibration set: turns "send x% of traffic up" into a threshold."""

    quantiles: tuple[float, ...]  # score at evenly spaced probability levels 0, ..., 1

    def __post_init__(self) -> None:
        if len(self.quantiles) < 2 or any(
            b < a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)
        ):
            raise ValueError("calibration needs at least two non-decreasing quantiles")

    @classmethod
    def from_scores(cls, scores: Sequence[float], points: int = 201) -> Calibration:
        levels = np.linspace(0.0, 1.0, points)
        return cls(tuple(float(q) for q in np.quantile(np.asarray(scores, float), levels)))

    def _levels(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, len(self.quantiles))

    def threshold_for_share(self, share: float) -> float:
        """The score above which `share` (0..1) of calibration traffic lies."""
        share = min(max(share, 0.0), 1.0)
        return float(np.interp(1.0 - share, self._levels(), self.quantiles))

    def share_above(self, score: float) -> float:
        """The share of calibration traffic scoring at or above `score`."""
        return float(1.0 - np.interp(score, self.quantiles, self._levels()))


@dataclass(frozen=True)
class LinearClassifier:
    """A linear model over hashed features; scoring needs numpy only (no scikit-learn)."""

    weights: np.ndarray  # float32, one per feature index (hashed buckets, then dense)
    bias: float
    link: Link  # "logistic": sigmoid(margin); "gain": margin estimates strong - weak in [-1, 1]
    calibration: Calibration
    info: Mapping[str, str | float] = field(default_factory=dict)
    # `weights` read from Python, to score one request without numpy's per-call cost: a view of
    # the whole array, and the dense part as a tuple.
    _weight_of: memoryview[float] = field(init=False, repr=False, compare=False)
    _dense_weights: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.weights.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} weights, got {self.weights.shape}")
        if self.weights.dtype != np.float32:
            raise ValueError(f"expected float32 weights, got {self.weights.dtype}")
        # A memoryview changes its item format only by way of bytes.
        weight_of = np.ascontiguousarray(self.weights).data.cast("B").cast("f")
        object.__setattr__(self, "_weight_of", weight_of)
        object.__setattr__(self, "_dense_weights", tuple(weight_of[HASH_BUCKETS:].tolist()))

    def margin(self, features: Features) -> float:
        """Weights times features plus bias; the buckets share one value, applied once."""
        buckets = features.buckets
        if len(buckets) <= _PYTHON_SUM_MAX:
            hashed = sum(map(self._weight_of.__getitem__, buckets))
        else:
            index = np.fromiter(buckets, np.intp, len(buckets))
            hashed = float(self.weights[index].sum(dtype=np.float64))
        dense: float = sum(map(mul, self._dense_weights, features.dense))
        return hashed * features.bucket_value + dense + self.bias

    def score_features(self, features: Features) -> float:
        m = self.margin(features)
        if self.link == "logistic":
            return 1.0 / (1.0 + math.exp(-min(max(m, -60.0), 60.0)))
        return min(max((m + 1.0) / 2.0, 0.0), 1.0)

    def threshold_for_share(self, share: float) -> float:
        return self.calibration.threshold_for_share(share)

    def assess(self, request: ChatRequest) -> Assessment:
        features = extract(request)
        return Assessment(
            self.score_features(features),
            needs_reasoning(features),
            _token_estimate(features.prompt_chars, len(request.messages)),
        )

    def save(self, path: Path) -> None:
        """Write the artifact: an NPZ of plain arrays (no pickle), non-zero weights only."""
        nonzero = np.flatnonzero(self.weights).astype(np.int32)
        meta = {
            "format": ARTIFACT_FORMAT,
            "features": FEATURES_VERSION,
            "n_features": N_FEATURES,
            "link": self.link,
            "info": dict(self.info),
        }
        with path.open("wb") as out:
            np.savez_compressed(
                out,
                index=nonzero,
                weight=self.weights[nonzero].astype(np.float32),
                bias=np.array([self.bias]),
                quantiles=np.array(self.calibration.quantiles),
                meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
            )


def needs_reasoning(features: Features) -> bool:
    """Math, proofs or non-trivial code: requests where a max-reasoning tier may pay off."""
    return (
        features.proof_words > 0
        or features.math_marks >= 3
        or features.code_marks >= 2
        or features.numbers >= 4
    )


def _read_artifact(stream: IO[bytes]) -> LinearClassifier:
    with np.load(stream, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        if meta.get("format") != ARTIFACT_FORMAT or meta.get("features") != FEATURES_VERSION:
            raise ValueError(
                f"artifact {meta.get('format')}/{meta.get('features')} does not match "
                f"{ARTIFACT_FORMAT}/{FEATURES_VERSION}: retrain with `flashpro train`"
            )
        if meta.get("link") not in ("logistic", "gain"):
            raise ValueError(f"unknown link {meta.get('link')!r}")
        weights = np.zeros(N_FEATURES, np.float32)
        weights[npz["index"]] = npz["weight"]
        return LinearClassifier(
            weights=weights,
            bias=float(npz["bias"][0]),
            link=meta["link"],
            calibration=Calibration(tuple(float(q) for q in npz["quantiles"])),
            info=meta.get("info", {}),
        )


def load_classifier(path: Path | None = None) -> LinearClassifier:
    """Load an artifact written by `LinearClassifier.save`; None loads the one shipped in the package."""
    if path is not None:
        with path.open("rb") as stream:
            return _read_artifact(stream)
    shipped = resources.files("router").joinpath(SHIPPED_ARTIFACT)
    with shipped.open("rb") as stream:
        return _read_artifact(stream)
