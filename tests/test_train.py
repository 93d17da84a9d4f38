import argparse
import json
from pathlib import Path

import numpy as np

from router.offline.difficulty import read_difficulty, split_of
from router.offline.evaluate import add_score_arguments, read_rows, request_from_json, run_score
from router.offline.train import add_train_arguments, fit, run_train
from router.routing.classify import load_classifier

GAIN = "Which treaty ended the war described in the passage, and in which year was it signed?"
NO_GAIN = "What colour is the sky on a clear day?"
EASY = ("Name a fruit.", "Say hello.", "What day is it today?", "Spell cat.")
HARD = (
    "Prove that the integral of f converges and derive the bound step by step.",
    "Find all functions f such that f(x + y) = f(x) + f(y), with proof.",
    "Prove that there are infinitely many primes and derive a lower bound.",
    "Determine all real x with x^4 = 2^x and prove no others exist.",
)


def write_routing(path: Path, n: int = 80) -> None:
    with path.open("w") as out:
        for i in range(n):
            gains = i % 2 == 0
            row = {
                "id": f"r{i}",
                "source": "mmlu" if i % 3 else "gsm8k",
                "prompt": f"{GAIN if gains else NO_GAIN} ({i})",
                "strong_correct": 1.0,
                "weak_correct": 0.0 if gains else 1.0,
            }
            out.write(json.dumps(row) + "\n")
        out.write(
            json.dumps({"id": "log", "messages": [{"role": "user", "content": GAIN}], "label": 1})
            + "\n"
        )


def write_difficulty(path: Path, n: int = 120) -> None:
    with path.open("w") as out:
        for i in range(n):
            level = 1 + i % 5
            prompt = (HARD if level >= 4 else EASY)[i % 4] + f" (case {i})"
            out.write(
                json.dumps({"id": f"m{i}", "source": "math", "prompt": prompt, "level": level})
            )
            out.write("\n")


def test_split_is_deterministic_and_about_sixty_twenty_twenty() -> None:
    parts = [split_of(f"row-{i}") for i in range(5000)]
    assert parts == [split_of(f"row-{i}") for i in range(5000)]
    assert 0.57 < parts.count("train") / 5000 < 0.63
    assert 0.18 < parts.count("test") / 5000 < 0.22


def test_fit_learns_both_the_gain_and_the_difficulty(tmp_path: Path) -> None:
    write_routing(tmp_path / "routing.jsonl")
    write_difficulty(tmp_path / "math.jsonl")
    model = fit(read_rows(tmp_path / "routing.jsonl"), read_difficulty([tmp_path / "math.jsonl"]))
    gain = model.assess(request_from_json({"prompt": GAIN + " (x)"}))
    no_gain = model.assess(request_from_json({"prompt": NO_GAIN + " (x)"}))
    assert gain.gain is not None and no_gain.gain is not None and gain.gain > no_gain.gain
    hard = model.assess(request_from_json({"prompt": HARD[0] + " (y)"}))
    easy = model.assess(request_from_json({"prompt": EASY[0] + " (y)"}))
    assert hard.difficulty is not None and easy.difficulty is not None
    assert hard.difficulty > easy.difficulty + 0.1
    assert 0.0 <= easy.score < hard.score <= 1.0


def test_fit_is_deterministic(tmp_path: Path) -> None:
    write_routing(tmp_path / "routing.jsonl")
    write_difficulty(tmp_path / "math.jsonl")
    routing, hard = (
        read_rows(tmp_path / "routing.jsonl"),
        read_difficulty([tmp_path / "math.jsonl"]),
    )
    first, second = fit(routing, hard), fit(routing, hard)
    assert np.array_equal(first.difficulty.weights, second.difficulty.weights)
    assert np.array_equal(first.gain.weights, second.gain.weights)
    assert first.blend == second.blend and first.calibration == second.calibration


def test_train_cli_then_score_cli_matches_direct_assess(tmp_path: Path) -> None:
    write_routing(tmp_path / "train.jsonl")
    write_difficulty(tmp_path / "math.jsonl")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(tmp_path / "train.jsonl"),
            "--difficulty",
            str(tmp_path / "math.jsonl"),
            "--out",
            str(tmp_path / "m.npz"),
            "--sources",
            "mmlu",
        ]
    )
    assert run_train(args) == 0
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(tmp_path / "scores.jsonl"),
            "--model",
            str(tmp_path / "m.npz"),
        ]
    )
    assert run_score(args) == 0
    model = load_classifier(tmp_path / "m.npz")
    assert model.info["train_sources"] == "math,mmlu,traffic"
    objs = [json.loads(line) for line in (tmp_path / "train.jsonl").open()]
    scored = [json.loads(line) for line in (tmp_path / "scores.jsonl").open()]
    assert len(scored) == len(objs)
    for obj, line in zip(objs, scored, strict=True):
        assert line["score"] == model.assess(request_from_json(obj)).score
