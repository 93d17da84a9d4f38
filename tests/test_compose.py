"""docker-compose.yml and the Dockerfile: parsed, since no Docker engine runs here."""

from __future__ import annotations

import json
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
    assert services["flashpro"]["profiles"] == ["deepseek"]  # needs a key: not with simulate


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
    assert sim["environment"]["DEEPSEEK_ANTHROPIC_API_BASE"] == "http://simulator:9000/anthropic"
    assert "9000" in " ".join(services["simulator"]["command"])
    assert services["simulator"]["healthcheck"]["test"]


def test_every_command_exists_in_the_cli() -> None:
    for name, service in compose()["services"].items():
        if "command" in service and name != "redis":
            parses_as_cli(service["command"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd_line = next(line for line in dockerfile.split("\n") if line.startswith("CMD "))
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


def test_monitoring_profile_runs_prometheus_and_grafana() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert prometheus["ports"] == ["9090:9090"] and grafana["ports"] == ["3000:3000"]
    for service in (prometheus, grafana):
        for volume in service["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume  # mounted config is in the repo
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs["flashpro"]["static_configs"] for t in group["targets"]]
    assert "flashpro:8000" in targets and jobs["flashpro"]["metrics_path"] == "/metrics"
    assert jobs["flashpro-replicas"]["dns_sd_configs"][0]["names"] == ["flashpro-replica"]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "flashpro.yml").read_text())
    mounted = {v.split(":")[1] for v in grafana["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted


def exported_names(exposition: str) -> set[str]:
    """Every series name a PromQL query can use, from a live /metrics page."""
    suffixes = ("", "_total", "_created", "_bucket", "_count", "_sum")
    names: set[str] = set()
    for line in exposition.split("\n"):
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names.update(family + suffix for suffix in suffixes)
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def test_grafana_dashboard_queries_metrics_flashpro_exports(flashpro: str) -> None:
    import re

    import httpx

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/flashpro.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\bflashpro_[a-z0-9_]+", expr)}
    assert len(queried) >= 10
    exported = exported_names(httpx.get(flashpro + "/metrics").text)
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for figure in ("share per tier", "spend", "savings", "cache hit rate", "latency"):
        assert figure in titles
