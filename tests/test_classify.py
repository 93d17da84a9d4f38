import time
from pathlib import Path

import numpy as np
import pytest

from router.classify import Calibration, LinearClassifier, load_classifier
from router.features import N_FEATURES
from router.schemas import ChatRequest


def chat(text: str) -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}])


def test_calibration_threshold_for_share() -> None:
    calibration = Calibration.from_scores(np.linspace(0, 1, 1001))
    assert calibration.threshold_for_share(0.2) == pytest.approx(0.8, abs=1e-3)
    assert calibration.threshold_for_share(0.0) == pytest.approx(1.0)
    assert calibration.threshold_for_share(1.0) == pytest.approx(0.0)
    assert calibration.share_above(0.75) == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(ValueError):
        Calibration((0.5, 0.2))


def test_artifact_round_trip_keeps_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = np.zeros(N_FEATURES, np.float32)
    weights[rng.integers(0, N_FEATURES, 5000)] = rng.normal(size=5000)
    model = LinearClassifier(weights, -0.3, "logistic", Calibration((0.1, 0.5, 0.9)), {"m": "x"})
    model.save(tmp_path / "m.npz")
    loaded = load_classifier(tmp_path / "m.npz")
    for text in ("hello", "Prove Fermat's little theorem.", "def f(x): return x"):
        assert loaded.assess(chat(text)) == model.assess(chat(text))
    assert loaded.calibration == model.calibration and loaded.info == {"m": "x"}


def test_artifact_with_other_feature_version_is_refused(tmp_path: Path) -> None:
    import json

    path = tmp_path / "old.npz"
    meta = {"format": "flashpro-linear-v1", "features": "old", "link": "logistic"}
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
    low, high = classifier.threshold_for_share(0.8), classifier.threshold_for_share(0.2)
    assert 0.0 <= low < high <= 1.0


def test_four_megabyte_prompt_scores_quickly() -> None:
    classifier = load_classifier()
    huge = chat("The integral of x^2 is x^3/3. " * 140_000)
    classifier.assess(huge)
    start = time.perf_counter()
    assessment = classifier.assess(huge)
    assert time.perf_counter() - start < 0.05
    assert assessment.prompt_tokens > 1_000_000
