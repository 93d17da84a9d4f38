"""A short soak (bench/soak.py): mixed streaming and whole requests with injected faults; nothing
may be lost, and memory must not run away."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import soak
from router.app import build_deps
from router.routing.policy import load_policy
from router.simulator.server import RunningSimulator
from tests.conftest import serve_app, settings_for
from tests.fault_policy import write_policy


@pytest.mark.soak
def test_short_soak_loses_nothing(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    path = write_policy(tmp_path)
    settings = settings_for(simulator, policy=path)
    with serve_app(settings, build_deps(settings)) as base:
        report = soak(base, simulator.url, load_policy(path)[0], 10, 8, os.getpid())
    print(report.lines())
    assert report.lost == 0, report.lost_examples
    assert report.sent >= 100 and report.answered > report.sent // 3 and report.failed > 0
    assert report.rss_start_kib and report.rss_end_kib
    assert report.rss_end_kib < report.rss_start_kib + 200 * 1024  # no runaway growth
