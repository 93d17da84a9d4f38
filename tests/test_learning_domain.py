"""The learning test's traffic domain: ordinary by the difficulty head, misread by the shipped
classifier, and its hidden difficulty decided by words the shipped classifier has never seen."""

from __future__ import annotations

from router.offline.evaluate import apgr, routing_curve
from router.routing.classify import load_classifier
from router.schemas import ChatRequest
from tests.learning_domain import (
    PRODUCTS,
    UNKNOWN_DIFFICULTY,
    expected_quality,
    fit_prompts,
    held_out_prompts,
    hidden_difficulty,
)


def chat(prompt: str) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    )


def test_hidden_difficulty_is_the_named_products() -> None:
    assert hidden_difficulty("Where can I add a new user in Umbrick?") == PRODUCTS["umbrick"]
    assert hidden_difficulty("Quillon: how to print a summary?") == PRODUCTS["quillon"]
    assert hidden_difficulty("How do I reset my password?") == UNKNOWN_DIFFICULTY


def test_fit_and_held_out_prompts_are_thousands_and_disjoint() -> None:
    fit, held = fit_prompts(), held_out_prompts()
    assert len(fit) >= 1500 and len(held) >= 500
    assert not set(fit) & set(held)
    assert {hidden_difficulty(p) for p in held} == set(PRODUCTS.values())


def test_domain_is_ordinary_by_the_difficulty_head_and_misread_by_the_shipped_classifier() -> None:
    classifier = load_classifier()
    held = held_out_prompts()
    assessments = [classifier.assess(chat(p)) for p in held]
    knee = classifier.blend.knee
    assert max(a.difficulty or 0.0 for a in assessments) < knee  # the gain head alone orders them
    strong, weak = expected_quality(held)
    shipped = apgr(routing_curve([a.score for a in assessments], strong, weak))
    oracle = apgr(routing_curve([hidden_difficulty(p) for p in held], strong, weak))
    assert shipped < 0.5 < oracle - 0.2, (shipped, oracle)
