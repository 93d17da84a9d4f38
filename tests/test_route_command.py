"""`flashpro route`: starts quickly (it loads no upstream client) and can describe a request
with tools, headers, JSON output or streaming, so every kind of rule can be tried."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from router.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RULES = """rules:
  - name: tools-go-max
    when: {tools: true}
    then: {tier: pro-max}
  - name: json-goes-pro
    when: {json_output: true}
    then: {tier: pro}
  - name: streams-go-pro
    when: {stream: true}
    then: {tier: pro}
  - name: team-header
    when: {header: {x-team: research}}
    then: {tier: pro-max}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_route_loads_no_upstream_client_or_server() -> None:
    script = (
        "import sys\n"
        "from router.cli import main\n"
        "assert main(['route', 'Prove that sqrt(2) is irrational.']) == 0\n"
        "heavy = ('litellm', 'openai', 'fastapi', 'uvicorn', 'redis', 'sklearn', 'httpx')\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    result = run("-c", script)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def with_rules(tmp_path: Path) -> Path:
    text = (ROOT / "policies" / "default.yaml").read_text()
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace("rules:\n", RULES, 1), "utf-8")
    return path


def rule_of(output: str) -> str:
    line = next(line for line in output.split("\n") if line.startswith("rule"))
    return line.split()[1]


def test_route_flags_describe_tools_json_output_streams_and_headers(tmp_path: Path) -> None:
    policy = str(with_rules(tmp_path))
    for flags, rule in (
        (["--tools"], "tools-go-max"),
        (["--json-output"], "json-goes-pro"),
        (["--stream"], "streams-go-pro"),
        (["--header", "x-team=research"], "team-header"),
        (["--header", "X-Team=research", "--header", "x-other=1"], "team-header"),
    ):
        result = run("-m", "router", "route", "--policy", policy, *flags, "hello there")
        assert result.returncode == 0, result.stderr
        assert rule_of(result.stdout) == rule, (flags, result.stdout)
    plain = run("-m", "router", "route", "--policy", policy, "hello there")
    assert rule_of(plain.stdout) not in {"tools-go-max", "json-goes-pro", "team-header"}


def test_route_refuses_a_header_without_a_value() -> None:
    result = run("-m", "router", "route", "--header", "x-team", "hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "NAME=VALUE" in result.stderr


def undocumented(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    """Options and arguments of `parser` and its subcommands that have no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name != "bench":  # bench/run.py has its own parser
                    missing += undocumented(sub, f"{prefix} {name}")
        elif not action.help:
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_command_has_help() -> None:
    assert undocumented(build_parser(), "flashpro") == []
