"""A traffic domain on which the shipped classifier is wrong, with its hidden difficulty.

The story: a support desk for one company's products. Some products need careful multi-step
work to answer about (Flash often gets them wrong), others are simple look-ups; which is which is
decided by the product's name, a made-up word the shipped classifier has never seen, so it can
only learn it from this deployment's own labels. The phrasings are ordinary how-to questions
(the difficulty head reads them as easy, below the blend's knee), and the phrasings the shipped
classifier rates as needing Pro go more often with the easy products: what it takes for a sign of
need points the wrong way here.

`hidden_difficulty` is the simulator's truth (`--truth tests.learning_domain:hidden_difficulty`);
`fit_prompts` and `held_out_prompts` share products but not prompts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

# Product name -> hidden difficulty (how often Flash's answer falls short).
PRODUCTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "quillon": 0.05,
        "brisket": 0.05,
        "tamsin": 0.08,
        "parvel": 0.1,
        "oxley": 0.1,
        "dunmore": 0.12,
        "fennick": 0.15,
        "lorrow": 0.2,
        "velloc": 0.7,
        "zarquin": 0.75,
        "hollowmere": 0.8,
        "kestrix": 0.85,
        "ombrelle": 0.88,
        "thraxa": 0.9,
        "grisvald": 0.92,
        "umbrick": 0.95,
    }
)
UNKNOWN_DIFFICULTY: Final = 0.1  # a prompt that names no product
# Phrasings the shipped classifier rates as needing Pro more ({p}: the product, {d}: the task).
_RATED_UP: Final = (
    "In {p}, I want to {d}. Which menu is it?",
    "I have to {d} in {p} before Friday for the whole team. What are the options and which one "
    "would you recommend?",
    "Where can I {d} in {p}?",
    "Hi! Quick question about {p}: can I {d}?",
    "I'd like to {d} in {p}, where do I start?",
    "Remind me how I {d} in {p}, thanks!",
)
# Phrasings it rates as needing Pro less.
_RATED_DOWN: Final = (
    "{p}: how to {d}?",
    "Is there a way to {d} with {p}?",
    "How do I {d} in {p}?",
    "Can {p} {d}?",
    "Does {p} let me {d}?",
    "Tell me how to {d} using {p}.",
    "What is the quickest way to {d} in {p}?",
)
_TASKS: Final = (
    "change the display language",
    "export last month's invoices",
    "add a new user",
    "reset my password",
    "set up a recurring reminder",
    "share a folder with a colleague",
    "print a summary",
    "change the currency",
    "import contacts from a spreadsheet",
    "turn off email notifications",
    "merge two customer records",
    "archive old projects",
    "set the default time zone",
    "add a logo to the header",
    "undo a deleted entry",
    "schedule a weekly backup",
    "change the tax rate",
    "connect my calendar",
    "download a receipt",
    "rename a workspace",
)
_SCOPES: Final = (
    "",
    " for 12 people",
    " on my phone",
    " today",
    " for the Berlin team",
    " without losing data",
    " in bulk",
    " as an admin",
)
_MISLEADING: Final = 0.75  # how often a product takes the phrasings that point the wrong way


def hidden_difficulty(prompt_text: str) -> float:
    """The hidden difficulty of a prompt: its product's (the first named), else the default."""
    for word in re.findall(r"[a-z]+", prompt_text.lower()):
        if word in PRODUCTS:
            return PRODUCTS[word]
    return UNKNOWN_DIFFICULTY


def _all_prompts() -> list[str]:
    """Every prompt of the domain (one per product, task and scope), in a fixed order."""
    rng = random.Random(19)
    out: list[str] = []
    for product, difficulty in PRODUCTS.items():
        misleading = _RATED_UP if difficulty < 0.5 else _RATED_DOWN
        other = _RATED_DOWN if difficulty < 0.5 else _RATED_UP
        for task in _TASKS:
            for scope in _SCOPES:
                phrasings = misleading if rng.random() < _MISLEADING else other
                out.append(rng.choice(phrasings).format(p=product.capitalize(), d=task + scope))
    rng.shuffle(out)
    return out


def fit_prompts() -> list[str]:
    """The prompts traffic is replayed from (about two thirds of the domain)."""
    return [p for i, p in enumerate(_all_prompts()) if i % 3 != 0]


def held_out_prompts() -> list[str]:
    """The prompts routing quality is measured on (the other third)."""
    return [p for i, p in enumerate(_all_prompts()) if i % 3 == 0]


def expected_quality(prompts: Sequence[str]) -> tuple[list[float], list[float]]:
    """(strong, weak): each prompt's chance of a good Pro and Flash answer under the truth."""
    from router.simulator.truth import good_chance

    difficulties = [hidden_difficulty(p) for p in prompts]
    return (
        [good_chance("pro", d) for d in difficulties],
        [good_chance("flash", d) for d in difficulties],
    )
