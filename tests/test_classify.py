import math
import time
from pathlib import Path

import numpy as np
import pytest

from router.routing.classify import (
    Calibration,
    LinearClassifier,
    Link,
    estimate_tokens,
    load_classifier,
)
from router.routing.features import N_FEATURES, extract
from router.schemas import ChatRequest
from tests.test_features import VARIED, plain_extract, routing_prompts


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


def plain_score(model: LinearClassifier, request: ChatRequest) -> float:
    """The score as a dense dot product over the plain features, in numpy."""
    features = plain_extract(request)
    weights = model.weights[np.array(features.indices)].astype(np.float64)
    margin = float(weights @ np.array(features.values)) + model.bias
    if model.link == "logistic":
        return 1.0 / (1.0 + math.exp(-min(max(margin, -60.0), 60.0)))
    return min(max((margin + 1.0) / 2.0, 0.0), 1.0)


def varied_requests() -> list[ChatRequest]:
    short = [chat(f"Question {i}: what is the capital of France?") for i in range(5)]
    words = " ".join(chr(97 + i % 26) + chr(97 + i // 26) for i in range(260))
    long = [chat(f"Define {words[:n]}, step by step.") for n in (120, 300, len(words))]
    built = [ChatRequest.model_validate({"model": "auto", **body}) for body in VARIED]
    return short + long + built


@pytest.mark.parametrize("link", ["logistic", "gain"])
def test_scores_equal_the_plain_dot_product(link: Link) -> None:
    shipped = load_classifier()
    model = LinearClassifier(shipped.weights, shipped.bias, link, shipped.calibration)
    requests = varied_requests()
    sizes = {len(extract(r).buckets) for r in requests}
    assert min(sizes) < 10 and max(sizes) > 100  # few buckets and many: both ways of summing
    for request in requests:
        assessment = model.assess(request)
        assert abs(assessment.score - plain_score(model, request)) <= 1e-9
        assert assessment.prompt_tokens == estimate_tokens(request)


def test_shipped_scores_equal_the_plain_dot_product_on_routing_data() -> None:
    classifier = load_classifier()
    for prompt in routing_prompts():
        request = chat(prompt)
        assert abs(classifier.assess(request).score - plain_score(classifier, request)) <= 1e-9


def test_weights_must_be_float32() -> None:
    with pytest.raises(ValueError, match="float32"):
        LinearClassifier(np.zeros(N_FEATURES), 0.0, "gain", Calibration((0.0, 1.0)))
