"""docker-compose.yml and the Dockerfile: parsed, since no Docker engine runs here."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from router.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def parses_as_cli(command: list[str]) -> None:
    assert command[0] == "flashpro"
    build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown flag


def test_services_and_profiles() -> None:
    services = compose()["services"]
    assert {"redis", "flashpro", "simulator", "flashpro-sim"} <= set(services)
    assert services["simulator"]["profiles"] == ["simulate"]
    assert services["flashpro-sim"]["profiles"] == ["simulate"]
    assert "profiles" not in services["flashpro"]


def test_flashpro_service_wiring() -> None:
    service = compose()["services"]["flashpro"]
    assert service["build"] == "."
    assert "8000:8000" in service["ports"]
    assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert any(v.startswith("./policies:/app/policies") for v in service["volumes"])
    assert service["env_file"][0]["path"] == ".env"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_simulated_profile_needs_no_real_key() -> None:
    services = compose()["services"]
    sim = services["flashpro-sim"]
    assert sim["environment"]["DEEPSEEK_API_BASE"] == "http://simulator:9000"
    assert "9000" in " ".join(services["simulator"]["command"])
    assert services["simulator"]["healthcheck"]["test"]


def test_every_command_exists_in_the_cli() -> None:
    for name, service in compose()["services"].items():
        if "command" in service and name != "redis":
            parses_as_cli(service["command"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd_line = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    parses_as_cli(yaml.safe_load(cmd_line.removeprefix("CMD ")))
    assert shlex.split("flashpro serve")  # the container runs the same command as the tests


def test_container_command_matches_the_tested_serve_command() -> None:
    service = compose()["services"]["flashpro"]
    assert service["command"][:2] == ["flashpro", "serve"]
    assert "--policy" in service["command"]


def test_scale_profile_puts_replicas_behind_the_balancer() -> None:
    services = compose()["services"]
    replica, balancer = services["flashpro-replica"], services["balancer"]
    assert replica["profiles"] == balancer["profiles"] == ["scale"]
    assert "ports" not in replica  # `--scale flashpro-replica=N` needs no host port per replica
    assert replica["environment"]["REDIS_URL"] == services["flashpro"]["environment"]["REDIS_URL"]
    assert replica["command"] == services["flashpro"]["command"]
    assert balancer["ports"] == ["8080:8080"]
    assert balancer["depends_on"]["flashpro-replica"]["condition"] == "service_healthy"
    mount = next(v for v in balancer["volumes"] if v.endswith("/etc/nginx/nginx.conf:ro"))
    config = (ROOT / mount.split(":")[0]).read_text()
    assert "server flashpro-replica:8000" in config
    assert "listen 8080;" in config
    assert "proxy_buffering off;" in config  # streams are relayed chunk by chunk
