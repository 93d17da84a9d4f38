"""Labels of shadow comparisons as data for `flashpro learn`: checked, split by id into fit and
held-out, and a classifier's figures on the held-out ones. Pure: the command reads the labels.

A label (the record the server's shadow comparisons write) carries the request's features as
routed and `gain`, how much the strong tier's answer won (1 strong better, 0.5 tie, 0 weak
better, averaged over the two position-swapped judgements). Labels whose features are of
another feature version are re-extracted from their `request` when they kept it
(`learning.store_prompts`), else skipped; malformed ones are skipped; each skip is counted by
reason.

On held-out labels a classifier is measured by: APGR (router/offline/evaluate.py) with the weak
tier's quality `1 - gain` and the strong tier's `gain`, requests sent up in score order; the AUC
of the score for "strong won" (gain > 0.5) against "weak won" (gain < 0.5); and the log loss of
its gain head against `gain`. Scores are read from the features (a short `max_tokens` discount,
which needs the request, is not applied).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.offline.evaluate import apgr, routing_curve
from router.offline.refit import margins, matrix
from router.routing.classify import DifficultyClassifier
from router.routing.features import FEATURES_VERSION, HASH_BUCKETS, N_DENSE, extract
from router.schemas import ChatRequest

MIN_RISE = 0.01  # the held-out APGR must rise at least this much
CONFIDENCE = 0.99  # ... and in this share of paired bootstrap resamples
RESAMPLES = 500
RULE = (
    f"promote when the held-out APGR rises by at least {MIN_RISE} and the candidate's APGR "
    f"beats the current one's in at least {CONFIDENCE:.0%} of {RESAMPLES} paired bootstrap "
    "resamples of the held-out labels"
)


@dataclass(frozen=True, slots=True)
class Label:
    """A usable label: its id, soft target and the features of the request as routed."""

    id: str
    gain: float  # in [0, 1]: the chance the strong tier's answer is better
    agree: bool
    indices: tuple[int, ...]
    values: tuple[float, ...]


class Skip(Exception):
    """A label that cannot be used, and why (a short reason, counted)."""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Skip("malformed")
    return float(value)


def _features(obj: dict[str, Any]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    features = obj.get("features")
    if not isinstance(features, dict):
        raise Skip("malformed")
    if features.get("version") != FEATURES_VERSION:
        request = obj.get("request")
        if not isinstance(request, dict):
            raise Skip("features-version")
        try:
            found = extract(ChatRequest.model_validate({"model": "auto", **request}))
        except ValueError:
            raise Skip("malformed") from None
        return tuple(found.indices), tuple(found.values)
    buckets, dense = features.get("buckets"), features.get("dense")
    if not isinstance(buckets, list) or not isinstance(dense, list) or len(dense) != N_DENSE:
        raise Skip("malformed")
    if not all(type(b) is int and 0 <= b < HASH_BUCKETS for b in buckets):
        raise Skip("malformed")
    if len(set(buckets)) != len(buckets):
        raise Skip("malformed")
    value = _number(features.get("bucket_value"))
    return (
        (*buckets, *range(HASH_BUCKETS, HASH_BUCKETS + N_DENSE)),
        (*(value,) * len(buckets), *(_number(d) for d in dense)),
    )


def label_of(obj: Any) -> Label:
    """The usable label in a record; `Skip` with the reason otherwise."""
    if not isinstance(obj, dict):
        raise Skip("malformed")
    label_id = obj.get("id")
    if not isinstance(label_id, str) or not label_id:
        raise Skip("malformed")
    gain = _number(obj.get("gain"))
    if not 0.0 <= gain <= 1.0:
        raise Skip("malformed")
    indices, values = _features(obj)
    return Label(label_id, gain, obj.get("agree") is True, indices, values)


def usable(records: Iterable[Any]) -> tuple[list[Label], Counter[str]]:
    """The usable labels, in id order (one per id: the first record), and the skips by reason."""
    labels: dict[str, Label] = {}
    skipped: Counter[str] = Counter()
    for record in records:
        try:
            label = label_of(record)
        except Skip as skip:
            skipped[str(skip)] += 1
            continue
        if label.id in labels:
            skipped["duplicate"] += 1
        else:
            labels[label.id] = label
    return [labels[key] for key in sorted(labels)], skipped


def is_held_out(label_id: str, share: float) -> bool:
    """Whether a label is held out: a hash of its id, so the split is the same on every run."""
    digest = hashlib.sha256(f"learn-split:{label_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def split(labels: Sequence[Label], share: float) -> tuple[list[Label], list[Label]]:
    """(fit, held-out)."""
    held = [is_held_out(label.id, share) for label in labels]
    return [lb for lb, h in zip(labels, held, strict=True) if not h], [
        lb for lb, h in zip(labels, held, strict=True) if h
    ]


@dataclass(frozen=True, slots=True)
class Figures:
    """A classifier on held-out labels (module docstring); None where undefined."""

    n: int
    apgr: float | None
    auc: float | None
    log_loss: float | None

    def as_json(self) -> dict[str, Any]:
        return {"heldout_n": self.n, "apgr": self.apgr, "auc": self.auc, "log_loss": self.log_loss}


def scores(classifier: DifficultyClassifier, labels: Sequence[Label]) -> np.ndarray:
    """The blended score of each label's features, and its gain margin."""
    x = matrix([lb.indices for lb in labels], [lb.values for lb in labels])
    difficulty, gain = margins(classifier.difficulty, x), margins(classifier.gain, x)
    blend = classifier.blend
    return np.array([blend.score(d, g) for d, g in zip(difficulty, gain, strict=True)])


def held_out_apgr(score: np.ndarray, gain: np.ndarray) -> float | None:
    value = apgr(routing_curve(score, gain, 1.0 - gain))  # type: ignore[arg-type]
    return None if math.isnan(value) else value


def auc(score: np.ndarray, gain: np.ndarray) -> float | None:
    """Chance that a label the strong tier won scores above one the weak tier won (ties 1/2)."""
    from scipy.stats import rankdata  # type: ignore[import-untyped]

    won, lost = gain > 0.5, gain < 0.5
    if not won.any() or not lost.any():
        return None
    ranks = rankdata(score[won | lost])
    positive = won[won | lost]
    p, n = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - p * (p + 1) / 2) / (p * n))


def figures(classifier: DifficultyClassifier, labels: Sequence[Label]) -> Figures:
    if not labels:
        return Figures(0, None, None, None)
    gain = np.array([lb.gain for lb in labels])
    score = scores(classifier, labels)
    x = matrix([lb.indices for lb in labels], [lb.values for lb in labels])
    p = np.clip(0.5 * (1.0 + np.tanh(0.5 * margins(classifier.gain, x))), 1e-12, 1 - 1e-12)
    loss = float(-np.mean(gain * np.log(p) + (1.0 - gain) * np.log(1.0 - p)))
    return Figures(len(labels), held_out_apgr(score, gain), auc(score, gain), loss)


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    wins: float  # share of paired resamples in which the candidate's APGR is higher
    reason: str


def verdict(current: np.ndarray, candidate: np.ndarray, gain: np.ndarray) -> Verdict:
    """Whether the candidate's held-out APGR is better by more than noise (`RULE`)."""
    before, after = held_out_apgr(current, gain), held_out_apgr(candidate, gain)
    if before is None or after is None:
        return Verdict(False, 0.0, "the held-out labels show no gain from the strong tier")
    rng = np.random.default_rng(0)
    wins = 0
    for _ in range(RESAMPLES):
        pick = rng.integers(0, len(gain), len(gain))
        a, b = held_out_apgr(current[pick], gain[pick]), held_out_apgr(candidate[pick], gain[pick])
        wins += a is not None and b is not None and b > a
    share = wins / RESAMPLES
    if after - before < MIN_RISE:
        return Verdict(
            False, share, f"APGR {before:.4f} -> {after:.4f}: rises by less than {MIN_RISE}"
        )
    if share < CONFIDENCE:
        return Verdict(
            False,
            share,
            f"APGR {before:.4f} -> {after:.4f}, better in only {share:.0%} of resamples",
        )
    return Verdict(
        True, share, f"APGR {before:.4f} -> {after:.4f}, better in {share:.0%} of resamples"
    )
