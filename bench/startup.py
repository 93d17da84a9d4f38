"""Benchmark how long the `flashpro` command takes to answer, beside the interpreter alone. Does
I/O: starts processes.

Run: python bench/startup.py [--runs 5]

Times, in the same run and alternating, `python -c pass` (the floor: the interpreter starting),
`flashpro --help`, `flashpro route "<prompt>"` (scores and explains one decision; it should
load no upstream client) and `flashpro policy check policies/default.yaml`, and prints each
median with its ratio to the floor. The target for `route` is under a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "flashpro --help": ["-m", "router", "--help"],
    "flashpro route": ["-m", "router", "route", "Prove that sqrt(2) is irrational."],
    "flashpro policy check": ["-m", "router", "policy", "check", "policies/default.yaml"],
}


def seconds(args: list[str]) -> float:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # alternate, so a busy moment hits every command alike
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<24}{'median s':>10}{'min s':>8}{'x floor':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{median:>10.3f}{min(values):>8.3f}{median / floor:>9.1f}")


if __name__ == "__main__":
    main()
