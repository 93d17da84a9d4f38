"""The `flashpro` command as a user runs it: serve (with and without a key), route, python -m."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from router import cli
from router.cli import main
from tests.conftest import flashpro_process


def env_without_key() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DEEPSEEK_API_KEY", "DEEPSEEK_API_BASE")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def test_serve_without_a_key_exits_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--port", "0"],
        env=env_without_key(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "DEEPSEEK_API_KEY" in result.stderr
    assert "--simulate" in result.stderr


def test_serve_simulate_answers_the_openai_sdk() -> None:
    args = ["--simulate", "--simulate-speed", "0.01"]
    with flashpro_process(args, {"DEEPSEEK_API_KEY": ""}, ready_path="/readyz") as running:
        client = openai.OpenAI(base_url=running.base + "/v1", api_key="anything", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hello from the README"}]
        )
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-flashpro-tier"] in ("flash", "pro", "pro-max")
        stream = client.chat.completions.create(
            model="pro-max", messages=[{"role": "user", "content": "Think hard"}], stream=True
        )
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
        running.process.terminate()
        running.process.wait(timeout=60)
        output = running.output()
    assert "SIMULATED UPSTREAM" in output and "--simulate-speed 1" in output
    # which policy runs, and how to run the file a user may be editing
    assert "policy: the default embedded in the package" in output
    assert "flashpro serve --policy policies/default.yaml" in output


def test_route_command_explains_a_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "Prove that there are infinitely many primes."]) == 0
    out = capsys.readouterr().out
    for label in ("score", "difficulty", "gain", "why", "thresholds", "tier", "rule", "reason"):
        assert label in out
    assert "asks for a proof" in out
    assert main(["route", "--model", "pro", "hi"]) == 0
    assert "pinned:pro" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_bench_hands_its_arguments_to_the_benchmark_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "bench", "--help"],
        env=env_without_key(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: flashpro bench")
    assert "--streams" in result.stdout and "--no-litellm-proxy" in result.stdout


def test_bench_outside_a_source_checkout_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "bench_script", lambda: tmp_path / "bench" / "run.py")
    assert main(["bench"]) == 2
    assert "source checkout" in capsys.readouterr().err
