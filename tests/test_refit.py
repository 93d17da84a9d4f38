"""The gain head's refit toward the live one, the held-out split and the promotion rule."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from router.offline.labelset import auc, is_held_out, verdict
from router.offline.refit import Rows, margins, matrix, refit_gain
from router.routing.classify import load_classifier
from router.routing.features import HASH_BUCKETS, extract
from router.schemas import ChatRequest

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


def rows(count: int, seed: int = 3) -> tuple[Rows, list[bool]]:
    """Prompts of random words; the strong tier wins when 'quorvath' is in them."""
    rng = random.Random(seed)
    indices, values, targets, marked = [], [], [], []
    for _ in range(count):
        hot = rng.random() < 0.5
        text = " ".join(rng.choice(WORDS) for _ in range(6)) + (" quorvath" if hot else "")
        features = extract(ChatRequest(model="auto", messages=[{"role": "user", "content": text}]))
        indices.append(tuple(features.indices))
        values.append(tuple(features.values))
        targets.append(0.9 if hot else 0.2)
        marked.append(hot)
    return Rows(indices, values, targets, [1.0] * count), marked


def test_the_refit_learns_the_word_and_keeps_the_level() -> None:
    live = load_classifier().gain
    data, marked = rows(300)
    head = refit_gain(live, data)
    x = matrix(data.indices, data.values)
    before, after = margins(live, x), margins(head, x)
    hot = np.array(marked)
    assert after[hot].mean() - after[~hot].mean() > 1.0 + before[hot].mean() - before[~hot].mean()
    assert after.mean() == pytest.approx(before.mean(), abs=1e-4)  # the level is the live one's
    assert refit_gain(live, data).weights.tobytes() == head.weights.tobytes()  # deterministic


def test_a_strong_prior_keeps_the_live_head_and_unseen_words_never_move() -> None:
    live = load_classifier().gain
    data, _ = rows(300)
    held = refit_gain(live, data, strength=1e9)
    assert np.abs(held.weights - live.weights).max() < 1e-3
    head = refit_gain(live, data)
    seen = {i for row in data.indices for i in row if i < HASH_BUCKETS}
    moved = set(np.flatnonzero(head.weights[:HASH_BUCKETS] != live.weights[:HASH_BUCKETS]))
    assert moved and moved <= seen


def test_the_held_out_split_is_stable_and_about_its_share() -> None:
    ids = [f"req-{i}" for i in range(4000)]
    held = [i for i in ids if is_held_out(i, 0.2)]
    assert held == [i for i in ids if is_held_out(i, 0.2)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert set(held) <= {i for i in ids if is_held_out(i, 0.5)}  # a larger share holds more


def test_auc_counts_pairs_and_ties() -> None:
    rng = np.random.default_rng(4)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    gain = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], 60)
    won, lost = score[gain > 0.5], score[gain < 0.5]
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(won, lost)]
    assert auc(score, gain) == pytest.approx(sum(pairs) / len(pairs))
    assert auc(score, np.full(60, 0.5)) is None


def test_the_same_scores_or_a_tiny_rise_are_not_promoted() -> None:
    rng = np.random.default_rng(5)
    gain = rng.choice([0.0, 0.5, 1.0, 1.0], 300)
    score = rng.random(300)
    assert not verdict(score, score, gain).promote
    better = score + 0.5 * gain  # ranks the strong tier's wins higher
    judged = verdict(score, better, gain)
    assert judged.promote and judged.wins >= 0.99
    assert not verdict(better, score, gain).promote
