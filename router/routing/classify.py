"""Score how hard a request is and how much a stronger tier would gain: the `Classifier` interface.

Pure, except `DifficultyClassifier.save`, `load_classifier` and `load_versioned`, which write and
read the model artifact (an NPZ of plain arrays plus a JSON header, read with
`allow_pickle=False`; `read_classifier` checks an artifact's bytes, from a file or the model store,
before anything uses them). Scoring needs numpy only; the model is fitted by
`router.offline.train`, the one module that uses scikit-learn.

Two linear heads read the same features (`router.routing.features`):

* **difficulty**, on one absolute scale for every kind of request: about 0.05 for chit-chat and
  look-ups, 0.3 for knowledge questions, 0.5 for an easy coding or math problem, 0.7 for a medium
  one, 0.9 and above for proofs, olympiad problems, hard algorithms, systems design;
* **gain**, how much the strong model's answer beats the weak one's (fitted to real outcomes).

`Blend` makes them one score: the gain head, standardised, orders ordinary requests; once the
difficulty head says a request is hard (above `knee`), difficulty lifts the score steeply
(`slope`), so hard work outranks anything the gain head says about ordinary requests, and within
hard work the order is the difficulty's. A logistic squash puts the result in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from operator import mul
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from router.routing.features import (
    ALWAYS_PRESENT,
    DENSE_LABELS,
    DENSE_NAMES,
    FEATURES_VERSION,
    HASH_BUCKETS,
    N_DENSE,
    N_FEATURES,
    Features,
    extract,
    message_chars,
)
from router.schemas import ChatRequest

ARTIFACT_FORMAT = "flashpro-two-heads-v1"
SHIPPED_ARTIFACT = "data/classifier.npz"
# An artifact is about 1 MB; anything past these bounds is refused before it is unpacked.
MAX_ARTIFACT_BYTES = 32 * 1024 * 1024
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
# Up to this many buckets, summing their weights one by one in Python beats numpy, whose fixed
# cost per call (building an index array, gathering) is a few microseconds.
_PYTHON_SUM_MAX = 48
# Reasons: at most this many named features, each moving the difficulty by at least this much.
_MAX_REASONS = 3
_MIN_REASON = 0.02
REASONING_DIFFICULTY = 0.6  # from here on a request counts as reasoning-heavy
# A request that caps its answer this short leaves no room for a stronger tier's thinking (and
# is what agents' background calls look like: titles, one-line summaries, topic checks): its
# difficulty is lowered by SHORT_ANSWER_DISCOUNT.
SHORT_ANSWER_TOKENS = 512
SHORT_ANSWER_DISCOUNT = 0.3


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the classifier says about one request."""

    score: float  # in [0, 1]; higher = more need for a stronger tier
    reasoning: bool  # math, proofs or hard code detected: candidates for max reasoning
    prompt_tokens: int  # estimated size of the whole prompt
    difficulty: float | None = None  # difficulty head, absolute scale (see module docstring)
    gain: float | None = None  # gain head: chance in [0, 1] that the strong tier answers better
    reasons: tuple[str, ...] = ()  # the named features that moved the difficulty most, in words


class Classifier(Protocol):
    def assess(self, request: ChatRequest) -> Assessment: ...

    def threshold_for_share(self, share: float) -> float:
        """The score above which `share` of calibration traffic lies (policy `shares:`)."""
        ...

    def share_above(self, score: float) -> float:
        """The share of calibration traffic scoring at or above `score`."""
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

    def share_above(self, score: float) -> float:
        return 1.0 - score


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
    def from_scores(
        cls, scores: Sequence[float], points: int = 201, weights: Sequence[float] | None = None
    ) -> Calibration:
        """Quantiles of `scores`, each counted with its weight (default: all alike)."""
        s = np.asarray(scores, float)
        w = np.ones_like(s) if weights is None else np.asarray(weights, float)
        order = np.argsort(s, kind="stable")
        s, w = s[order], w[order]
        cumulative = (np.cumsum(w) - w / 2) / w.sum()  # mid-point of each score's weight
        levels = np.linspace(0.0, 1.0, points)
        return cls(tuple(float(q) for q in np.interp(levels, cumulative, s)))

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
class Head:
    """One linear model over the features; scoring needs numpy only."""

    weights: np.ndarray  # float32, one per feature index (hashed buckets, then dense)
    bias: float
    # `weights` read from Python, to score one request without numpy's per-call cost.
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

    def hashed(self, features: Features) -> float:
        """The hashed words' and pairs' part of the margin."""
        buckets = features.buckets
        if len(buckets) <= _PYTHON_SUM_MAX:
            total: float = sum(map(self._weight_of.__getitem__, buckets))
        else:
            index = np.fromiter(buckets, np.intp, len(buckets))
            total = float(self.weights[index].sum(dtype=np.float64))
        return total * features.bucket_value

    def margin(self, features: Features) -> float:
        """Weights times features plus bias; the buckets share one value, applied once."""
        dense: float = sum(map(mul, self._dense_weights, features.dense))
        return self.hashed(features) + dense + self.bias

    def dense_parts(self, features: Features, reference: Sequence[float]) -> list[float]:
        """What each dense feature adds to the margin compared with the reference request."""
        weights, values = self._dense_weights, features.dense
        return [w * (x - r) for w, x, r in zip(weights, values, reference, strict=True)]


@dataclass(frozen=True)
class Blend:
    """How the two heads make one score (module docstring).

    s = (gain margin - gain_mean) / gain_std + slope * max(0, difficulty - knee)
        + low_slope * min(0, difficulty - knee); score = sigmoid((s - center) / temperature).
    """

    gain_mean: float
    gain_std: float
    knee: float
    slope: float
    low_slope: float
    center: float = 0.0
    temperature: float = 1.0

    def raw(self, difficulty: float, gain_margin: float) -> float:
        over = difficulty - self.knee
        lift = self.slope * over if over > 0 else self.low_slope * over
        return (gain_margin - self.gain_mean) / self.gain_std + lift

    def score(self, difficulty: float, gain_margin: float) -> float:
        z = (self.raw(difficulty, gain_margin) - self.center) / self.temperature
        return 1.0 / (1.0 + math.exp(-min(max(z, -60.0), 60.0)))

    def as_array(self) -> np.ndarray:
        return np.array(
            [
                self.gain_mean,
                self.gain_std,
                self.knee,
                self.slope,
                self.low_slope,
                self.center,
                self.temperature,
            ]
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> Blend:
        return cls(*(float(v) for v in values))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(x, -60.0), 60.0)))


@dataclass(frozen=True)
class DifficultyClassifier:
    """The difficulty and gain heads, their blend and the calibration of the blended score."""

    difficulty: Head
    gain: Head
    blend: Blend
    calibration: Calibration
    reference: tuple[float, ...] = (0.0,) * N_DENSE  # mean dense features of calibration traffic
    info: Mapping[str, str | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.reference) != N_DENSE:
            raise ValueError(f"expected {N_DENSE} reference values, got {len(self.reference)}")

    def parts(self, features: Features) -> tuple[float, float]:
        """(difficulty, gain margin) of the features."""
        return self.difficulty.margin(features), self.gain.margin(features)

    def score_features(self, features: Features) -> float:
        return self.blend.score(*self.parts(features))

    def threshold_for_share(self, share: float) -> float:
        return self.calibration.threshold_for_share(share)

    def share_above(self, score: float) -> float:
        return self.calibration.share_above(score)

    def reasons(self, features: Features) -> tuple[str, ...]:
        """The named features that moved the difficulty most against typical traffic, in words."""
        parts = self.difficulty.dense_parts(features, self.reference)
        present = [
            j
            for j in range(N_DENSE)
            if abs(parts[j]) >= _MIN_REASON
            and (features.dense[j] != 0.0 or DENSE_NAMES[j] in ALWAYS_PRESENT)
        ]
        ranked = sorted(present, key=lambda j: -abs(parts[j]))[:_MAX_REASONS]
        return tuple(
            f"{DENSE_LABELS[DENSE_NAMES[j]][0 if parts[j] > 0 else 1]} {parts[j]:+.2f}"
            for j in ranked
        )

    def assess(self, request: ChatRequest) -> Assessment:
        features = extract(request)
        difficulty, gain = self.parts(features)
        reasons = self.reasons(features)
        limit = request.output_limit()
        if limit is not None and limit <= SHORT_ANSWER_TOKENS:
            difficulty -= SHORT_ANSWER_DISCOUNT
            reasons = (f"short answer asked ({limit} tokens) {-SHORT_ANSWER_DISCOUNT:+.2f}",)
            reasons += self.reasons(features)[: _MAX_REASONS - 1]
        return Assessment(
            self.blend.score(difficulty, gain),
            needs_reasoning(features, difficulty),
            _token_estimate(features.prompt_chars, len(request.messages)),
            difficulty,
            _sigmoid(gain),
            reasons,
        )

    def save(self, path: Path) -> None:
        """Write the artifact: an NPZ of plain arrays (no pickle), non-zero weights only."""
        path.write_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        """The artifact's bytes (what `save` writes)."""
        meta = {
            "format": ARTIFACT_FORMAT,
            "features": FEATURES_VERSION,
            "n_features": N_FEATURES,
            "info": dict(self.info),
        }
        arrays: dict[str, np.ndarray] = {
            "blend": self.blend.as_array(),
            "quantiles": np.array(self.calibration.quantiles),
            "reference": np.array(self.reference),
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
        }
        for name, head in (("difficulty", self.difficulty), ("gain", self.gain)):
            nonzero = np.flatnonzero(head.weights).astype(np.int32)
            arrays[f"{name}_index"] = nonzero
            arrays[f"{name}_weight"] = head.weights[nonzero].astype(np.float32)
            arrays[f"{name}_bias"] = np.array([head.bias])
        out = io.BytesIO()
        np.savez_compressed(out, allow_pickle=False, **arrays)
        return out.getvalue()


def difficulty_words(difficulty: float) -> str:
    """The difficulty scale in words (module docstring)."""
    for bound, words in ((0.2, "trivial"), (0.4, "easy"), (0.6, "moderate"), (0.8, "hard")):
        if difficulty < bound:
            return words
    return "very hard"


def why(assessment: Assessment) -> list[str]:
    """The assessment's parts and reasons as lines of text (for `flashpro route`)."""
    lines = []
    if assessment.difficulty is not None:
        lines.append(
            f"difficulty {assessment.difficulty:.2f}    ({difficulty_words(assessment.difficulty)})"
        )
    if assessment.gain is not None:
        lines.append(
            f"gain       {assessment.gain:.2f}    (chance the stronger tier answers better)"
        )
    if assessment.reasons:
        lines.append(f"why        {'; '.join(assessment.reasons)}")
    return lines


def needs_reasoning(features: Features, difficulty: float) -> bool:
    """Math, proofs or hard code: requests where a max-reasoning tier may pay off."""
    return (
        difficulty >= REASONING_DIFFICULTY
        or features.cue("proof") > 0
        or features.cue("math_notation") >= 3
    )


def _head(npz: Mapping[str, np.ndarray], name: str) -> Head:
    weights = np.zeros(N_FEATURES, np.float32)
    weights[npz[f"{name}_index"]] = npz[f"{name}_weight"]
    return Head(weights, float(npz[f"{name}_bias"][0]))


def _read_artifact(stream: IO[bytes]) -> DifficultyClassifier:
    with np.load(stream, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        if (
            meta.get("format") != ARTIFACT_FORMAT
            or meta.get("features") != FEATURES_VERSION
            or meta.get("n_features") != N_FEATURES
        ):
            raise ValueError(
                f"artifact {meta.get('format')}/{meta.get('features')} does not match "
                f"{ARTIFACT_FORMAT}/{FEATURES_VERSION}: retrain with `flashpro train`"
            )
        return DifficultyClassifier(
            difficulty=_head(npz, "difficulty"),
            gain=_head(npz, "gain"),
            blend=Blend.from_array(npz["blend"]),
            calibration=Calibration(tuple(float(q) for q in npz["quantiles"])),
            reference=tuple(float(r) for r in npz["reference"]),
            info=meta.get("info", {}),
        )


def load_classifier(path: Path | None = None) -> DifficultyClassifier:
    """Load an artifact written by `save`; None loads the one shipped in the package."""
    return load_versioned(path)[0]


def load_versioned(path: Path | None = None) -> tuple[DifficultyClassifier, str]:
    """An artifact and its version: `shipped-<sha12>` for the one in the package (None),
    `file-<sha12>` for another file. OSError when it cannot be read, ValueError when it is not
    an artifact."""
    if path is not None:
        data = path.read_bytes()
        return read_classifier(data), classifier_version(data, "file")
    data = resources.files("router").joinpath(SHIPPED_ARTIFACT).read_bytes()
    return read_classifier(data), classifier_version(data, "shipped")


def classifier_version(data: bytes, kind: str) -> str:
    """`<kind>-<sha12>`: the first 12 hex digits of the artifact's sha256."""
    return f"{kind}-{hashlib.sha256(data).hexdigest()[:12]}"


def read_classifier(data: bytes) -> DifficultyClassifier:
    """The classifier in an artifact's bytes, checked whole before anything uses it: bounded in
    size (packed and unpacked), readable, of this feature version, finite. ValueError otherwise."""
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ValueError(f"artifact of {len(data)} bytes is over {MAX_ARTIFACT_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise ValueError(f"artifact unpacks to {unpacked} bytes, over {MAX_UNPACKED_BYTES}")
        classifier = _read_artifact(io.BytesIO(data))
    except (KeyError, IndexError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"not a classifier artifact: {exc}") from exc
    numbers = (
        classifier.difficulty.weights,
        classifier.gain.weights,
        classifier.blend.as_array(),
        np.array(classifier.calibration.quantiles),
        np.array(classifier.reference),
        np.array([classifier.difficulty.bias, classifier.gain.bias]),
    )
    if not all(np.isfinite(values).all() for values in numbers):
        raise ValueError("artifact holds a weight that is not a finite number")
    if classifier.blend.gain_std <= 0 or classifier.blend.temperature <= 0:
        raise ValueError("artifact's blend needs a positive gain_std and temperature")
    return classifier
