import json
import math
from pathlib import Path

import numpy as np
import pytest

from router.routing.classify import (
    Blend,
    Calibration,
    DifficultyClassifier,
    Head,
    classifier_version,
    estimate_tokens,
    load_classifier,
    load_versioned,
    read_classifier,
)
from router.routing.features import DENSE_NAMES, HASH_BUCKETS, N_DENSE, N_FEATURES, extract
from router.schemas import ChatRequest
from tests.test_features import VARIED, routing_prompts


def chat(text: str) -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}])


def random_head(seed: int) -> Head:
    rng = np.random.default_rng(seed)
    weights = np.zeros(N_FEATURES, np.float32)
    weights[rng.integers(0, N_FEATURES, 5000)] = rng.normal(size=5000)
    weights[HASH_BUCKETS:] = rng.normal(size=N_DENSE) * 0.1
    return Head(weights, float(rng.normal()))


def random_classifier() -> DifficultyClassifier:
    return DifficultyClassifier(
        random_head(0),
        random_head(1),
        Blend(0.1, 0.5, 0.5, 20.0, 2.0, 0.3, 2.0),
        Calibration((0.1, 0.5, 0.9)),
        tuple(float(i) / N_DENSE for i in range(N_DENSE)),
        {"m": "x"},
    )


def test_calibration_threshold_for_share() -> None:
    calibration = Calibration.from_scores(np.linspace(0, 1, 1001))
    assert calibration.threshold_for_share(0.2) == pytest.approx(0.8, abs=1e-3)
    assert calibration.threshold_for_share(0.0) == pytest.approx(1.0)
    assert calibration.share_above(0.75) == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(ValueError):
        Calibration((0.5, 0.2))


def test_weighted_calibration_counts_each_score_by_its_weight() -> None:
    scores = [0.1] * 10 + [0.9] * 10
    even = Calibration.from_scores(scores)
    heavy_top = Calibration.from_scores(scores, weights=[1.0] * 10 + [9.0] * 10)
    assert even.share_above(0.5) == pytest.approx(0.5, abs=0.05)
    assert heavy_top.share_above(0.5) == pytest.approx(0.9, abs=0.05)


def test_blend_lets_difficulty_lead_above_the_knee_only() -> None:
    blend = Blend(gain_mean=0.0, gain_std=1.0, knee=0.5, slope=40.0, low_slope=0.0)
    assert blend.raw(0.3, 1.0) == blend.raw(0.45, 1.0) == 1.0  # below: the gain orders
    assert blend.raw(0.9, -2.0) > blend.raw(0.6, 3.0)  # above: the difficulty does
    scores = [blend.score(d, 0.0) for d in (0.2, 0.55, 0.7, 0.95)]
    assert scores == sorted(scores) and all(0.0 < s < 1.0 for s in scores)


def test_artifact_round_trip_keeps_assessments(tmp_path: Path) -> None:
    model = random_classifier()
    model.save(tmp_path / "m.npz")
    loaded = load_classifier(tmp_path / "m.npz")
    for text in ("hello", "Prove Fermat's little theorem.", "def f(x): return x"):
        assert loaded.assess(chat(text)) == model.assess(chat(text))
    assert loaded.calibration == model.calibration and loaded.info == {"m": "x"}
    assert loaded.blend == model.blend and loaded.reference == model.reference


def test_artifact_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.npz"
    meta = {"format": "flashpro-linear-v1", "features": "hash-words-v1", "link": "logistic"}
    np.savez(
        path,
        index=np.zeros(0, np.int32),
        weight=np.zeros(0, np.float32),
        bias=np.zeros(1),
        quantiles=np.array([0.0, 1.0]),
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    with pytest.raises(ValueError, match="retrain"):
        load_classifier(path)


def test_artifact_bytes_are_checked_whole_before_use() -> None:
    model = random_classifier()
    data = model.to_bytes()
    assert read_classifier(data).assess(chat("hello")) == model.assess(chat("hello"))
    for broken in (b"", b"not a zip", data[: len(data) // 2], data[:-40] + b"\0" * 40):
        with pytest.raises(ValueError):
            read_classifier(broken)
    weights = model.gain.weights.copy()
    weights[3] = np.nan
    poisoned = DifficultyClassifier(
        model.difficulty, Head(weights, 0.0), model.blend, model.calibration, model.reference
    )
    with pytest.raises(ValueError, match="finite"):
        read_classifier(poisoned.to_bytes())
    with pytest.raises(ValueError, match="over"):
        read_classifier(b"\0" * (33 * 1024 * 1024))


def test_versions_name_the_artifact_by_its_bytes(tmp_path: Path) -> None:
    version = load_versioned()[1]
    assert version.startswith("shipped-") and len(version) == len("shipped-") + 12
    assert load_versioned()[1] == version
    random_classifier().save(tmp_path / "m.npz")
    model, other = load_versioned(tmp_path / "m.npz")
    assert other == classifier_version((tmp_path / "m.npz").read_bytes(), "file") != version
    assert model.info == {"m": "x"}


def plain_parts(model: DifficultyClassifier, request: ChatRequest) -> tuple[float, float]:
    """Both heads' margins as dense dot products over the features, in numpy."""
    features = extract(request)
    index, values = np.array(features.indices), np.array(features.values)
    return tuple(  # type: ignore[return-value]
        float(head.weights[index].astype(np.float64) @ values) + head.bias
        for head in (model.difficulty, model.gain)
    )


def varied_requests() -> list[ChatRequest]:
    short = [chat(f"Question {i}: what is the capital of France?") for i in range(5)]
    words = " ".join(chr(97 + i % 26) + chr(97 + i // 26) for i in range(260))
    long = [chat(f"Define {words[:n]}, step by step.") for n in (120, 300, len(words))]
    built = [ChatRequest.model_validate({"model": "auto", **body}) for body in VARIED]
    return short + long + built


def test_scores_equal_the_plain_dot_products() -> None:
    model = random_classifier()
    requests = varied_requests()
    sizes = {len(extract(r).buckets) for r in requests}
    assert min(sizes) < 10 and max(sizes) > 100  # few buckets and many: both ways of summing
    for request in requests:
        assessment = model.assess(request)
        difficulty, gain = plain_parts(model, request)
        assert assessment.difficulty == pytest.approx(difficulty, abs=1e-6)
        assert assessment.gain == pytest.approx(1 / (1 + math.exp(-gain)), abs=1e-6)
        assert assessment.score == pytest.approx(model.blend.score(difficulty, gain), abs=1e-6)
        assert assessment.prompt_tokens == estimate_tokens(request)


def test_shipped_scores_equal_the_plain_dot_products_on_routing_data() -> None:
    classifier = load_classifier()
    for prompt in routing_prompts(100):
        request = chat(prompt)
        assessment = classifier.assess(request)
        difficulty, gain = plain_parts(classifier, request)
        assert assessment.score == pytest.approx(classifier.blend.score(difficulty, gain), abs=1e-6)


def test_reasons_name_the_features_that_moved_the_difficulty() -> None:
    weights = np.zeros(N_FEATURES, np.float32)
    weights[HASH_BUCKETS + DENSE_NAMES.index("proof")] = 1.0
    weights[HASH_BUCKETS + DENSE_NAMES.index("very_short")] = -0.5
    model = DifficultyClassifier(
        Head(weights, 0.3),
        Head(np.zeros(N_FEATURES, np.float32), 0.0),
        Blend(0.0, 1.0, 0.5, 20.0, 0.0),
        Calibration((0.0, 1.0)),
    )
    proof = model.assess(chat("Prove that the square root of two is not a fraction."))
    assert proof.reasons and proof.reasons[0].startswith("asks for a proof +")
    short = model.assess(chat("hi"))
    assert short.reasons == ("very short -0.50",)


def test_shipped_artifact_loads_and_scores_in_unit_interval() -> None:
    classifier = load_classifier()
    prompts = [
        "hi",
        "What is 2+2?",
        "Prove that there are infinitely many primes.",
        "Which is a mammal?\nA. frog\nB. whale\nC. trout\nD. newt\nAnswer:",
    ]
    assessments = [classifier.assess(chat(p)) for p in prompts]
    assert all(0.0 <= a.score <= 1.0 for a in assessments)
    assert assessments[2].reasoning and not assessments[0].reasoning
    assert assessments[0].difficulty is not None and assessments[2].difficulty is not None
    assert assessments[0].difficulty < 0.3 < 0.6 < assessments[2].difficulty
    low, high = classifier.threshold_for_share(0.8), classifier.threshold_for_share(0.2)
    assert 0.0 <= low < high <= 1.0


def test_weights_must_be_float32() -> None:
    with pytest.raises(ValueError, match="float32"):
        Head(np.zeros(N_FEATURES), 0.0)
