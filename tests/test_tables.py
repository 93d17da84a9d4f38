"""Tables printed into a pipe or a file keep every cell whole (no 80-column cut)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from router.offline.terminal import table_console

ROOT = Path(__file__).resolve().parents[1]


def flashpro(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env |= {"PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_policy_explain_into_a_pipe_shows_whole_model_ids(tmp_path: Path) -> None:
    result = flashpro("policy", "explain", str(ROOT / "policies" / "default.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "deepseek/deepseek-flash" in result.stdout and "deepseek/deepseek-v4-pro" in result.stdout
    )
    assert "\u2026" not in result.stdout  # rich's ellipsis for a cut cell
    assert max(len(line) for line in result.stdout.split("\n")) > 80


def test_eval_into_a_pipe_shows_whole_target_words(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"question {i}: what is {i} + {i}?", "strong_correct": i % 2, "weak_correct": 0}
        | {"source": "mmlu"}
        for i in range(20)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    result = flashpro("eval", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\u2026" not in result.stdout
    assert "MISSED" in result.stdout or " met " in result.stdout


def test_a_console_on_a_pipe_fits_a_wide_table(tmp_path: Path) -> None:
    out = tmp_path / "table.txt"
    with out.open("w") as stream:
        console = table_console(file=stream)
        table = Table()
        for name in ("request", "reason"):
            table.add_column(name)
        table.add_row("4f1c9a07b2de000003e8", "because " * 30)
        console.print(table)
    text = out.read_text()
    assert "4f1c9a07b2de000003e8" in text and ("because " * 30).strip() in text
