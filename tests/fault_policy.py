"""Policy files for the hardening tests: the default policy with fast timeouts and backoffs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.soak import soak_policy
from router.app import build_deps
from router.routing.callers import key_digest
from router.simulator.server import RunningSimulator
from tests.conftest import serve_app, settings_for

CLIENT_KEY = "fp-client-key-alpha"
OTHER_KEY = "fp-client-key-beta"


def write_policy(directory: Path, timeout_s: float = 1.0, **sections: Any) -> Path:
    """The default policy with every tier's timeout at `timeout_s`, fast retries and backoffs,
    and `sections` set on top, written to `directory`."""
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(soak_policy(timeout_s, **sections)), "utf-8")
    return path


@contextmanager
def keyed_flashpro(simulator: RunningSimulator, directory: Path) -> Iterator[str]:
    """flashpro (in process, production dependencies) under a policy that requires a client
    key: CLIENT_KEY, of the group `team`."""
    policy = write_policy(
        directory,
        auth={"required": True},
        groups={"team": {}},
        keys={key_digest(CLIENT_KEY): "team"},
    )
    settings = settings_for(simulator, policy=policy)
    with serve_app(settings, build_deps(settings)) as base:
        yield base
