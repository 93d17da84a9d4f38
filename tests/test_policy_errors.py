"""Policy mistakes reported as a person fixes them: one problem per line, one path style,
"did you mean" for a mistyped key, and YAML errors at the file's line and column."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from router.routing.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = (ROOT / "policies" / "default.yaml").read_text()
PATH_STYLE = re.compile(r"^[a-z_]+(\[\d+\]|\.[A-Za-z0-9_-]+)*: ")


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return caught.value.problems


def test_a_mistyped_key_suggests_the_one_meant() -> None:
    text = DEFAULT.replace("when: {tools: true}", "when: {tool: true}", 1)
    (problem,) = problems_of(text)
    assert problem.startswith("rules[1].when.tool: ")
    assert "unknown key" in problem and "did you mean `tools`?" in problem


@pytest.mark.parametrize(
    ("old", "new", "path", "meant"),
    [
        ("rules:\n", "rule:\n", "rule", "rules"),
        ("thinking: disabled", "thinkng: disabled", "tiers.flash.thinkng", "thinking"),
        ("input_usd_per_mtok: 0.30", "input_usd_per_mtoks: 0.30", "tiers.flash.prices", "input"),
    ],
)
def test_mistyped_keys_at_any_depth_get_a_suggestion(
    old: str, new: str, path: str, meant: str
) -> None:
    text = DEFAULT.replace(old, new, 1)
    assert text != DEFAULT
    found = [p for p in problems_of(text) if "unknown key" in p]
    assert len(found) == 1 and found[0].startswith(path), found
    assert f"did you mean `{meant}" in found[0]


def test_a_key_like_nothing_known_lists_the_known_ones() -> None:
    text = DEFAULT.replace("when: {tools: true}", "when: {zzzz: true}", 1)
    (problem,) = problems_of(text)
    assert "unknown key" in problem and "tools" in problem and "did you mean" not in problem


def test_every_problem_is_its_own_line_in_one_path_style() -> None:
    text = (
        DEFAULT.replace("default_tier: flash", "default_tier: flsh", 1)
        .replace("then: {max_tier: pro}", "then: {max_tier: prox}", 1)
        .replace("then: {min_tier: pro}", "then: {min_tier: pr0}", 1)
    )
    problems = problems_of(text)
    assert len(problems) == 3, problems
    for problem in problems:
        assert PATH_STYLE.match(problem), problem
        assert "; " not in problem.split(": ", 1)[1].split(" (tiers")[0]
    field_error = problems_of(DEFAULT.replace("when: {tools: true}", "when: {tools: 3}", 1))
    assert all(PATH_STYLE.match(p) for p in field_error), field_error
    assert field_error[0].startswith("rules[1].when.tools: ")


def test_yaml_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ntiers:\n  flash: model: x\n", "utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:3:")
    assert "unicode string" not in problem and "not valid YAML" in problem
    assert "\n" not in problem


def test_policy_check_prints_one_problem_per_line(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        DEFAULT.replace("when: {tools: true}", "when: {tool: true}", 1).replace(
            "thinking: disabled", "thinking: sometimes", 1
        ),
        "utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run(
        [sys.executable, "-m", "router", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().split("\n")
    assert lines[0] == f"flashpro: invalid policy {path}:"
    assert all(line.startswith("  - ") for line in lines[1:])
    assert any("did you mean `tools`?" in line for line in lines[1:])
    assert any(line.startswith("  - tiers.flash.thinking: ") for line in lines[1:])
    assert len(lines) == 3


def test_a_single_policy_problem_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ntiers:\n  flash: model: x\n", "utf-8")
    for args in (["route", "--policy", str(path), "hi"], ["policy", "explain", str(path)]):
        result = subprocess.run(
            [sys.executable, "-m", "router", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (
            f"flashpro: invalid policy {path}:3:15: not valid YAML: "
            "mapping values are not allowed here"
        )
