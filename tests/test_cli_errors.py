"""The `flashpro` command on bad input, as a user runs it: one clear line on stderr and exit
code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.offline.inputs import InputError, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "default.yaml"
ROW = {"prompt": "What is 2 + 2?", "strong_correct": 1, "weak_correct": 0, "source": "mmlu"}


def flashpro(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command failed with exit code 2 and one line on stderr holding `expected`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flashpro: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def write_rows(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
    return path


@pytest.mark.parametrize("command", ["eval", "score", "train", "simulate"])
def test_a_missing_data_file_is_one_line(command: str, tmp_path: Path) -> None:
    args = {
        "eval": ["eval", "--data", "absent.jsonl"],
        "score": ["score", "--data", "absent.jsonl", "--out", "scores.jsonl"],
        "train": ["train", "--data", "absent.jsonl", "--out", "model.npz"],
        "simulate": ["policy", "simulate", POLICY, "--data", "absent.jsonl"],
    }[command]
    one_line_error(flashpro(*args, cwd=tmp_path), "absent.jsonl", "No such file")


@pytest.mark.parametrize("command", ["eval", "score", "simulate"])
def test_a_malformed_jsonl_line_names_the_file_and_line(command: str, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n\n" + '{"prompt": "cut short",\n', "utf-8")
    args = {
        "eval": ["eval", "--data", data.name],
        "score": ["score", "--data", data.name, "--out", "scores.jsonl"],
        "simulate": ["policy", "simulate", POLICY, "--data", data.name],
    }[command]
    one_line_error(flashpro(*args, cwd=tmp_path), "rows.jsonl:3", "not valid JSON")


@pytest.mark.parametrize("command", ["eval", "train", "simulate"])
def test_a_row_without_weak_correct_names_the_field(command: str, tmp_path: Path) -> None:
    partial = {k: v for k, v in ROW.items() if k != "weak_correct"}
    write_rows(tmp_path / "rows.jsonl", ROW, partial)
    args = {
        "eval": ["eval", "--data", "rows.jsonl"],
        "train": ["train", "--data", "rows.jsonl", "--out", "model.npz"],
        "simulate": ["policy", "simulate", POLICY, "--data", "rows.jsonl"],
    }[command]
    one_line_error(flashpro(*args, cwd=tmp_path), "rows.jsonl:2", "weak_correct")


def test_a_line_that_is_not_an_object_is_one_line(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.jsonl", ROW, [1, 2])
    one_line_error(flashpro("eval", "--data", "rows.jsonl", cwd=tmp_path), "rows.jsonl:2", "list")


@pytest.mark.parametrize("command", ["eval", "score", "bench-classifier"])
def test_a_missing_model_file_is_one_line(command: str, tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.jsonl", ROW)
    args = {
        "eval": ["eval", "--data", "rows.jsonl", "--model", "absent.npz"],
        "score": ["score", "--data", "rows.jsonl", "--out", "s.jsonl", "--model", "absent.npz"],
        "bench-classifier": ["bench-classifier", "--model", "absent.npz"],
    }[command]
    one_line_error(flashpro(*args, cwd=tmp_path), "absent.npz")


def test_a_model_file_that_is_not_an_artifact_is_one_line(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.jsonl", ROW)
    (tmp_path / "notes.npz").write_text("not a classifier", "utf-8")
    result = flashpro("eval", "--data", "rows.jsonl", "--model", "notes.npz", cwd=tmp_path)
    one_line_error(result, "notes.npz", "classifier")


def test_route_with_an_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    result = flashpro("route", "--model", "gpt-4", "hi", cwd=tmp_path)
    one_line_error(result, "gpt-4", "auto")


def test_eval_plot_without_matplotlib_says_how_to_install_it_before_any_work(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # a sitecustomize that makes `import matplotlib` fail as on an install without it
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Missing())\n",
        "utf-8",
    )
    write_rows(tmp_path / "rows.jsonl", ROW)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{blocker}"}
    result = flashpro(
        "eval", "--data", "absent.jsonl", "--plot", "curve.png", cwd=tmp_path, env=env
    )
    line = one_line_error(result, "matplotlib", "pip install")
    assert "absent.jsonl" not in line  # said before reading (and scoring) anything
    assert not (tmp_path / "curve.png").exists()


def test_policy_simulate_keeps_unicode_line_separators_inside_a_prompt(tmp_path: Path) -> None:
    prompts = ["first\u2028second", "next\u2029paragraph", "a\u0085b", "plain"]
    write_rows(tmp_path / "rows.jsonl", *({**ROW, "prompt": p} for p in prompts))
    result = flashpro("policy", "simulate", POLICY, "--data", "rows.jsonl", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["requests"] == 4


def test_jsonl_rows_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    text = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"
    path.write_bytes(
        json.dumps({"prompt": text}, ensure_ascii=False).encode() + b"\n\n" + b'{"n": 2}\r\n'
    )
    assert list(read_jsonl(path)) == [(1, {"prompt": text}), (3, {"n": 2})]


def test_jsonl_reader_names_the_line_of_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(InputError, match=r"rows.jsonl:2: not UTF-8"):
        list(read_jsonl(path))


def test_serve_with_a_missing_classifier_says_so_before_starting(tmp_path: Path) -> None:
    env = {"FLASHPRO_CLASSIFIER": "absent.npz", "DEEPSEEK_API_KEY": "sk-unused"}
    result = flashpro("serve", "--port", "0", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().split("\n")[-1]
    assert last.startswith("flashpro: absent.npz: cannot read the classifier")


@pytest.mark.parametrize("command", ["score", "eval"])
def test_an_output_in_a_missing_directory_is_refused_before_any_work(
    command: str, tmp_path: Path
) -> None:
    write_rows(tmp_path / "rows.jsonl", ROW)
    args = {
        "score": ["score", "--data", "absent.jsonl", "--out", "nowhere/scores.jsonl"],
        "eval": ["eval", "--data", "absent.jsonl", "--plot", "nowhere/curve.png"],
    }[command]
    line = one_line_error(flashpro(*args, cwd=tmp_path), "nowhere")
    assert "absent.jsonl" not in line


@pytest.mark.parametrize("command", ["eval", "score", "train", "policy simulate"])
def test_a_missing_required_option_is_one_line(command: str, tmp_path: Path) -> None:
    args = [*command.split(), *([str(POLICY)] if command == "policy simulate" else [])]
    result = flashpro(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().split("\n")
    assert line.startswith(f"flashpro {command}: ") and "--data" in line and "--help" in line
