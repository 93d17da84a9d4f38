"""Policy files for the hardening tests: the default policy with fast timeouts and backoffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.soak import soak_policy

CLIENT_KEY = "fp-client-key-alpha"
OTHER_KEY = "fp-client-key-beta"


def write_policy(directory: Path, timeout_s: float = 1.0, **sections: Any) -> Path:
    """The default policy with every tier's timeout at `timeout_s`, fast retries and backoffs,
    and `sections` set on top, written to `directory`."""
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(soak_policy(timeout_s, **sections)), "utf-8")
    return path
