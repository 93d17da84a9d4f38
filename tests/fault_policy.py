"""Policy files for the hardening tests: the default policy with fast timeouts and backoffs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CLIENT_KEY = "fp-client-key-alpha"
OTHER_KEY = "fp-client-key-beta"
FAST_RETRIES: dict[str, float] = {
    "max_attempts": 2,
    "backoff_initial_ms": 5,
    "backoff_max_ms": 20,
    "retry_after_max_s": 0.05,
}


def policy_data(timeout_s: float = 1.0, **sections: Any) -> dict[str, Any]:
    """The default policy with every tier's timeout at `timeout_s`, fast retries, and
    `sections` set on top (a value of None removes a section)."""
    text = resources.files("router").joinpath("data/default.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    for tier in data["tiers"].values():
        tier["timeout_s"] = timeout_s
    data["retries"] = dict(FAST_RETRIES)
    data["breaker"] = {"failures": 1000, "open_seconds": 1}
    for name, value in sections.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def write_policy(directory: Path, timeout_s: float = 1.0, **sections: Any) -> Path:
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_data(timeout_s, **sections)), "utf-8")
    return path
