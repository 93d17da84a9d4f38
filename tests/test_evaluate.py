import json
from pathlib import Path

import numpy as np
import pytest

from router.offline.evaluate import apgr, cpt, report, routing_curve, row_from_json


def outcomes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    strong = (rng.random(n) < 0.8).astype(float)
    weak = np.where(strong == 1, (rng.random(n) < 0.75).astype(float), 0.0)
    return strong, weak


def test_perfect_router_beats_random_and_reversed_loses() -> None:
    strong, weak = outcomes(2000)
    gain = strong - weak
    perfect = apgr(routing_curve(gain, strong, weak))
    reversed_ = apgr(routing_curve(-gain, strong, weak))
    assert perfect > 0.85
    assert reversed_ < 0.2
    assert cpt(routing_curve(gain, strong, weak), 0.5) < 0.2


def test_constant_score_is_exactly_random() -> None:
    strong, weak = outcomes(500, seed=1)
    curve = routing_curve(np.zeros(500), strong, weak)
    assert apgr(curve) == pytest.approx(0.5)
    assert cpt(curve, 0.5) == pytest.approx(0.5, abs=0.01)
    assert cpt(curve, 0.8) == pytest.approx(0.8, abs=0.01)


def test_random_scores_are_near_half() -> None:
    strong, weak = outcomes(5000, seed=2)
    rng = np.random.default_rng(3)
    assert apgr(routing_curve(rng.random(5000), strong, weak)) == pytest.approx(0.5, abs=0.05)


def test_quality_curve_runs_from_weak_to_strong() -> None:
    strong, weak = outcomes(100, seed=4)
    curve = routing_curve(np.arange(100.0), strong, weak)
    assert curve.quality[0] == pytest.approx(weak.mean())
    assert curve.quality[-1] == pytest.approx(strong.mean())


def test_report_has_overall_and_per_source_rows() -> None:
    objs = [
        {
            "id": f"r{i}",
            "source": "a" if i % 2 else "b",
            "prompt": "x" * (i + 1),
            "strong_correct": 1.0,
            "weak_correct": float(i % 3 == 0),
        }
        for i in range(30)
    ]
    rows = [row_from_json(o) for o in objs]
    reports = {r.source: r for r in report(rows, [float(i) for i in range(30)])}
    assert set(reports) == {"overall", "a", "b"}
    assert reports["overall"].rows == 30
    assert reports["overall"].random.apgr == pytest.approx(0.5)


def test_decision_log_rows_map_feedback_to_gain() -> None:
    row = row_from_json(
        {
            "id": "q1",
            "request": {"messages": [{"role": "user", "content": "hi"}]},
            "tier": "flash",
            "feedback": {"strong_better": True},
        }
    )
    short = row_from_json({"messages": [{"role": "user", "content": "hi"}], "label": 0})
    assert (row.gain, row.strong, row.weak, row.source) == (1.0, 1.0, 0.0, "flash")
    assert (short.gain, short.strong, short.weak) == (0.0, 1.0, 1.0)


def test_lenient_labels_train_while_published_labels_evaluate(tmp_path: Path) -> None:
    obj = {
        "id": "g",
        "source": "gsm8k",
        "prompt": "2+2?",
        "strong_correct": 0.0,
        "weak_correct": 1.0,
        "meta": {"strong_correct_lenient": 1.0, "weak_correct_lenient": 1.0},
    }
    row = row_from_json(json.loads(json.dumps(obj)))
    assert (row.strong, row.weak, row.gain) == (0.0, 1.0, 0.0)


def test_family_report_scores_each_family_beside_prompt_length() -> None:
    from router.offline.difficulty import difficulty_row, family_reports

    objs = (
        [
            {"id": f"m{i}", "source": "math", "prompt": "x" * (10 + i % 3), "level": 1 + i % 5}
            for i in range(50)
        ]
        + [
            {"id": f"a{i}", "source": "arena_bench", "prompt": "y" * 10, "difficulty": i / 30}
            for i in range(30)
        ]
        + [{"id": f"s{i}", "source": "science", "prompt": "z", "hard": i % 2} for i in range(20)]
    )
    rows = [difficulty_row(o) for o in objs]
    scores = [
        float(o.get("level", 0)) + float(o.get("difficulty", 0)) + float(o.get("hard", 0))
        for o in objs
    ]
    reports = {r.source: r for r in family_reports(rows, scores)}
    assert reports["math"].metric == "spearman" and reports["math"].model == pytest.approx(1.0)
    assert reports["math"].meets_target() is True
    assert reports["arena_bench"].metric == "auc" and reports["arena_bench"].model == 1.0
    assert reports["arena_bench"].spearman_model == pytest.approx(1.0)
    assert reports["science"].model == 1.0 and reports["science"].length == 0.5
    assert reports["science"].meets_target() is None
