import argparse
import json
from pathlib import Path

import numpy as np

from router.offline.evaluate import add_score_arguments, read_rows, request_from_json, run_score
from router.offline.train import Candidate, add_train_arguments, choose, fit, run_train
from router.routing.classify import load_classifier

HARD = "Prove that the integral of f converges; derive the bound step by step."
EASY = "What colour is the sky?"


def write_rows(path: Path, n: int = 60) -> None:
    with path.open("w") as out:
        for i in range(n):
            hard = i % 2 == 0
            row = {
                "id": f"r{i}",
                "source": "mmlu" if i % 3 else "gsm8k",
                "prompt": f"{HARD if hard else EASY} ({i})",
                "strong_correct": 1.0,
                "weak_correct": 0.0 if hard else 1.0,
            }
            out.write(json.dumps(row) + "\n")
        out.write(
            json.dumps({"id": "log", "messages": [{"role": "user", "content": HARD}], "label": 1})
            + "\n"
        )


def test_fit_learns_which_prompts_need_the_strong_model(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl")
    rows = read_rows(tmp_path / "train.jsonl")
    for family in ("soft-logistic", "win-logistic", "ridge"):
        model = fit(rows, Candidate(family, 1.0))
        hard = model.assess(request_from_json({"prompt": HARD + " (x)"})).score
        easy = model.assess(request_from_json({"prompt": EASY + " (x)"})).score
        assert 0.0 <= easy < hard <= 1.0, family


def test_choose_is_deterministic(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.jsonl")
    rows = read_rows(tmp_path / "rows.jsonl")
    grid = (Candidate("soft-logistic", 1.0), Candidate("ridge", 1.0))
    first, figures = choose(rows, rows, rows, grid)
    second, _ = choose(rows, rows, rows, grid)
    assert set(figures) == {"soft-logistic(1)", "ridge(1)"}
    assert np.array_equal(first.weights, second.weights)


def test_train_cli_then_score_cli_matches_direct_assess(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(tmp_path / "train.jsonl"),
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
    assert model.info["train_sources"] == "mmlu,traffic"
    objs = [json.loads(line) for line in (tmp_path / "train.jsonl").open()]
    scored = [json.loads(line) for line in (tmp_path / "scores.jsonl").open()]
    assert len(scored) == len(objs)
    for obj, line in zip(objs, scored, strict=True):
        assert line["score"] == model.assess(request_from_json(obj)).score
