"""The command line of the simulated DeepSeek server (`flashpro simulate-upstream`): its flags and
the configuration they make. `router/cli.py` registers the command."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: `flashpro --help` does not load the server
    from router.simulator.server import SimulatorConfig
    from router.simulator.truth import GroundTruth


class SimulatorArgumentError(ValueError):
    """A flag's value cannot be used (the message names the flag)."""


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8100, help="port to listen on (default 8100)")
    parser.add_argument("--speed", type=float, default=1.0, help="latency multiplier; 0 = none")
    for flag, unit in (("--ttft-ms", "MS"), ("--tokens-per-s", "N")):
        parser.add_argument(
            flag,
            action="append",
            type=_model_value,
            default=[],
            metavar=f"MODEL={unit}",
            help="override one model's profile (repeatable); an unknown MODEL adds a model",
        )
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that fail")
    parser.add_argument(
        "--fault-status", type=int, default=500, help="status of those failures (default 500)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the fault, answer-quality and judge draws"
    )
    parser.add_argument(
        "--truth",
        metavar="MODULE:FUNCTION",
        help="ground truth: a function (prompt text) -> hidden difficulty in [0, 1]; answers "
        "then end with a quality marker and judge requests get a verdict "
        "(e.g. router.simulator.truth:hashed_difficulty)",
    )
    parser.add_argument(
        "--judge-noise",
        type=float,
        default=0.1,
        help="with --truth: the chance that a simulated judgement is wrong (default 0.1)",
    )
    parser.add_argument(
        "--max-output-tokens", type=int, default=400, help="longest answer, in tokens"
    )


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator's configuration from `add_simulator_arguments`' flags
    (SimulatorArgumentError for a --truth that cannot be loaded)."""
    from router.simulator.server import SimulatorConfig, default_profiles

    profiles = default_profiles()
    base = profiles["deepseek-v4-flash"]
    for model, ms in args.ttft_ms:
        profiles[model] = replace(profiles.get(model, base), ttft_ms=ms)
    for model, rate in args.tokens_per_s:
        profiles[model] = replace(profiles.get(model, base), tokens_per_s=rate)
    return SimulatorConfig(
        profiles=profiles,
        speed=args.speed,
        api_key=args.api_key,
        fault_rate=args.fault_rate,
        fault_status=args.fault_status,
        seed=args.seed,
        max_output_tokens=args.max_output_tokens,
        truth=None if args.truth is None else _ground_truth(args),
    )


def _ground_truth(args: argparse.Namespace) -> GroundTruth:
    from router.simulator.truth import GroundTruth, load_truth

    try:
        return GroundTruth(load_truth(args.truth), args.judge_noise, args.seed)
    except (ImportError, ValueError) as exc:
        raise SimulatorArgumentError(f"--truth {args.truth}: {exc}") from None


def _model_value(text: str) -> tuple[str, float]:
    model, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not model or not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"expected MODEL=NUMBER, got {text!r}")
    return model, number
