"""The `flashpro` command: serve, simulate-upstream, route, policy, train, eval, score, learn,
stats, bench. I/O."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from router.offline.inputs import InputError
from router.routing.policy import Policy, PolicyError, json_schema, load_policy

if TYPE_CHECKING:
    from router.schemas import ChatRequest

Handler = Callable[[argparse.Namespace], int]
SIMULATE_SPEED = 0.1  # `serve --simulate`: realistic pacing, ten times faster
ROUTE_TOOL = {  # what `flashpro route --tools` puts in the request
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "A tool the request offers.",
        "parameters": {"type": "object", "properties": {}},
    },
}


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench"]:  # every flag, --help included, belongs to bench/run.py
        return run_bench(given[1:])
    parser = build_parser(given[0] if given and not given[0].startswith("-") else None)
    args = parser.parse_args(given)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except InputError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a file a command writes or reads that no reader above named
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")


def _fail(message: str) -> int:
    """A command's error as the one line the user reads (exit code 2)."""
    print(f"flashpro: {message}", file=sys.stderr)
    return 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (`command` given) one whose other offline commands are listed
    without loading their modules."""
    parser = _Parser(
        prog="flashpro",
        description="OpenAI-compatible routing proxy for DeepSeek V4 (Flash, Pro, Pro-Max).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "--policy",
        type=Path,
        help="policy YAML, watched for edits (default: the policy embedded in the package, "
        "a copy of policies/default.yaml)",
    )
    serve.add_argument(
        "--host",
        default=os.environ.get("FLASHPRO_HOST", "127.0.0.1"),
        help="address to listen on (default: $FLASHPRO_HOST or 127.0.0.1; 0.0.0.0 for all)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("FLASHPRO_PORT", "8000")),
        help="port to listen on (default: $FLASHPRO_PORT or 8000)",
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--simulate",
        action="store_true",
        help="start the simulated DeepSeek server alongside and route to it (no key needed)",
    )
    serve.add_argument(
        "--simulate-speed",
        type=float,
        default=SIMULATE_SPEED,
        help=f"the simulator's latency factor (default {SIMULATE_SPEED}: a Pro answer in about "
        "a second; 1 = DeepSeek's real pacing, 0 = no waiting)",
    )
    serve.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default: info)"
    )
    serve.set_defaults(handler=run_serve)

    simulate = commands.add_parser("simulate-upstream", help="run the simulated DeepSeek server")
    if command in (None, "simulate-upstream"):
        from router.simulator.command import add_simulator_arguments

        add_simulator_arguments(simulate)
    simulate.set_defaults(handler=run_simulate)

    explain = commands.add_parser("route", help="show how a prompt would be routed")
    explain.add_argument("prompt", help="the user message")
    explain.add_argument("--policy", type=Path, help="policy YAML (default: the embedded policy)")
    explain.add_argument("--model", default="auto", help="requested model or alias")
    explain.add_argument("--system", help="a system prompt")
    explain.add_argument("--tools", action="store_true", help="the request defines a tool")
    explain.add_argument(
        "--json-output", action="store_true", help="the request asks for JSON output"
    )
    explain.add_argument("--stream", action="store_true", help="the request streams")
    explain.add_argument(
        "--header",
        action="append",
        type=_header_value,
        default=[],
        metavar="NAME=VALUE",
        help="a request header, e.g. x-flashpro-quality=high (repeatable)",
    )
    explain.set_defaults(handler=run_route)

    policy = commands.add_parser("policy", help="check or describe policy files")
    policy_commands = policy.add_subparsers(title="policy commands", metavar="ACTION")
    check = policy_commands.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path, help="the policy YAML")
    check.set_defaults(handler=run_policy_check)
    schema = policy_commands.add_parser("schema", help="print the policy JSON Schema")
    schema.add_argument("--out", type=Path, help="write it to this file (default: stdout)")
    schema.set_defaults(handler=run_policy_schema)
    replay = policy_commands.add_parser(
        "simulate", help="estimate share, cost, quality and latency over a labelled data set"
    )
    replay.add_argument("file", type=Path, help="the policy YAML")
    replay.add_argument("--data", type=Path, required=True, help="JSONL: prompt, *_correct")
    replay.add_argument("--alias", default="auto", help="the alias to route the prompts as")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(handler=run_policy_simulate)
    describe = policy_commands.add_parser("explain", help="print the policy as decision tables")
    describe.add_argument("file", type=Path, help="the policy YAML")
    describe.set_defaults(handler=run_policy_explain)

    _add_offline_commands(commands, command)

    commands.add_parser(  # listed for --help; main() hands its arguments to bench/run.py
        "bench",
        help="side-by-side benchmark: the upstream alone, flashpro, LiteLLM's proxy (from a "
        "source checkout; needs wrk and nginx)",
    )
    return parser


def bench_script() -> Path:
    """bench/run.py of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "bench" / "run.py"


def run_bench(args: Sequence[str]) -> int:
    script = bench_script()
    if not script.is_file():
        print(
            f"flashpro: {script} not found: the benchmark runs from a source checkout "
            "(git clone, pip install -e .), not from an installed wheel.",
            file=sys.stderr,
        )
        return 2
    import subprocess

    return subprocess.call([sys.executable, str(script), *args])


# Commands whose arguments live in their offline module, imported only when the command runs
# (or for a full parser), so `route` and `serve` start without numpy-heavy modules they skip.
OFFLINE_COMMANDS = (  # name, help, module, argument adder, handler
    ("train", "fit the difficulty classifier", "train", "add_train_arguments", "run_train"),
    ("eval", "evaluate routing quality", "evaluate", "add_eval_arguments", "run_eval"),
    ("score", "score a data set", "evaluate", "add_score_arguments", "run_score"),
    (
        "bench-classifier",
        "time the classifier",
        "evaluate",
        "add_bench_classifier_arguments",
        "run_bench_classifier",
    ),
    ("learn", "learn from labelled traffic", "learn", "add_learn_arguments", "run_learn"),
    (
        "stats",
        "summarise a running flashpro's traffic",
        "stats",
        "add_stats_arguments",
        "run_stats",
    ),
)


def _add_offline_commands(
    commands: argparse._SubParsersAction[_Parser], command: str | None
) -> None:
    for name, help_text, module_name, add, run in OFFLINE_COMMANDS:
        sub = commands.add_parser(name, help=help_text)
        if command in (None, name):
            module = importlib.import_module(f"router.offline.{module_name}")
            getattr(module, add)(sub)
            sub.set_defaults(handler=getattr(module, run))


def _load_or_report(path: Path | None) -> Policy | None:
    """The policy, or None after saying what is wrong with it: one problem on one line, several
    one per line under the file's name."""
    try:
        return load_policy(path)[0]
    except PolicyError as exc:
        if len(exc.problems) == 1:
            (problem,) = exc.problems
            where = "" if problem.startswith(f"{exc.source}:") else f"{exc.source}: "
            print(f"flashpro: invalid policy {where}{problem}", file=sys.stderr)
            return None
        print(f"flashpro: invalid policy {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return None


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (and exit code 2, as argparse has)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def run_policy_check(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.file)
    if policy is None:
        return 1
    print(
        f"{args.file}: ok ({len(policy.tiers)} tiers, {len(policy.aliases)} aliases, "
        f"{len(policy.rules)} rules)"
    )
    return 0


def run_policy_schema(args: argparse.Namespace) -> int:
    text = json_schema()
    if args.out:
        args.out.write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


def run_policy_simulate(args: argparse.Namespace) -> int:
    from router.offline.inputs import load_classifier_file
    from router.offline.simulate import as_json, load_rows, render, simulate
    from router.routing.decide import resolve_thresholds

    policy = _load_or_report(args.file)
    if policy is None:
        return 2
    if args.alias not in policy.aliases:
        known = ", ".join(policy.aliases)
        return _fail(f"no alias '{args.alias}' in {args.file} (aliases: {known})")
    rows = load_rows(args.data)
    classifier = load_classifier_file(None)
    thresholds = resolve_thresholds(policy, classifier.threshold_for_share)
    outcomes = simulate(policy, thresholds, classifier, rows, args.alias)
    if args.json:
        print(as_json(outcomes))
    else:
        render(outcomes, list(policy.tiers))
    return 0


def run_policy_explain(args: argparse.Namespace) -> int:
    from router.offline.explain import explain
    from router.offline.terminal import table_console
    from router.routing.classify import load_classifier
    from router.routing.decide import resolve_thresholds

    policy = _load_or_report(args.file)
    if policy is None:
        return 2
    thresholds = resolve_thresholds(policy, load_classifier(None).threshold_for_share)
    explain(policy, thresholds, table_console())
    return 0


def run_route(args: argparse.Namespace) -> int:
    from router.errors import FlashproError
    from router.routing.classify import load_classifier, why
    from router.routing.decide import decide
    from router.routing.decision import facts_of
    from router.routing.routed import Routing

    policy = _load_or_report(args.policy)
    if policy is None:
        return 2
    classifier = load_classifier(None)
    routing = Routing.build(policy, "cli", classifier, {})
    request = _route_request(args)
    headers = dict(args.header)
    assessment = routing.classifier.assess(request)
    facts = facts_of(request, headers, assessment.prompt_tokens)
    try:
        decision = decide(policy, routing.thresholds, facts, assessment)
    except FlashproError as exc:  # e.g. a model the policy does not know
        return _fail(exc.message)
    print(f"score      {assessment.score:.4f}  (reasoning-heavy: {assessment.reasoning})")
    for line in why(assessment):
        print(line)
    if decision.alias is not None:
        steps = routing.thresholds[decision.alias]
        shown = ", ".join(f"{tier}>={value:.4f}" for tier, value in steps.steps)
        print(f"thresholds {decision.alias}: {steps.default_tier} below; {shown}")
    effort = f", effort {decision.reasoning_effort}" if decision.reasoning_effort else ""
    print(f"tier       {decision.tier}  ({decision.model}, thinking {decision.thinking}{effort})")
    print(f"rule       {decision.rule}")
    print(f"reason     {decision.reason}")
    return 0


def _route_request(args: argparse.Namespace) -> ChatRequest:
    """The chat request `flashpro route` describes, from its flags."""
    from router.schemas import ChatRequest

    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    body: dict[str, object] = {"model": args.model, "messages": messages, "stream": args.stream}
    if args.tools:
        body["tools"] = [ROUTE_TOOL]
    if args.json_output:
        body["response_format"] = {"type": "json_object"}
    return ChatRequest.model_validate(body)


def _header_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().lower(), value


def run_simulate(args: argparse.Namespace) -> int:
    from router.simulator import server as simulator
    from router.simulator.command import SimulatorArgumentError, simulator_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = simulator_config(args)
    except SimulatorArgumentError as exc:
        raise InputError(str(exc)) from None
    simulator.serve(config, args.host, args.port)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from router.http.server import FlashproConfig, edge_limits, serve
    from router.settings import Settings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    policy = _load_or_report(args.policy)
    if policy is None:
        return 2
    if args.policy is not None:
        os.environ["FLASHPRO_POLICY"] = str(args.policy.resolve())
    print(f"flashpro: {policy_notice(args.policy)}", file=sys.stderr, flush=True)
    settings = Settings()
    if settings.classifier is not None:  # one line here, not a traceback in every worker
        from router.offline.inputs import load_classifier_file

        load_classifier_file(settings.classifier)
    if args.simulate:
        _start_simulator(policy, args.simulate_speed)
    else:
        missing = sorted({t.api_key_env for t in policy.tiers.values()} - set(os.environ))
        if missing:
            print(
                f"flashpro: no upstream key: set {', '.join(missing)} (your DeepSeek API key), "
                "or run `flashpro serve --simulate` to try flashpro against its simulated "
                "DeepSeek server.",
                file=sys.stderr,
            )
            return 2
    from router.observe.metrics import multiprocess_dir

    config = FlashproConfig(
        "router.app:app_from_env",
        edges=edge_limits(settings),
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    from router.offline.learn import periodic_learning  # the policy's learning.refit_hours

    # every worker's metrics add up on /metrics
    with multiprocess_dir(args.workers), periodic_learning(args.policy, settings.redis_url):
        return serve(config)


def policy_notice(path: Path | None) -> str:
    """Which policy file a server runs, and how to run another."""
    if path is not None:
        return f"policy {path} (edits take effect while running)"
    return (
        "policy: the default embedded in the package; editing policies/default.yaml changes "
        "nothing until you run `flashpro serve --policy policies/default.yaml`"
    )


def _start_simulator(policy: Policy, speed: float) -> None:
    from router.simulator import server as simulator

    profiles = dict(simulator.default_profiles())
    for tier in policy.tiers.values():
        profiles.setdefault(
            tier.model_name, simulator.ModelProfile(tier.latency.ttft_ms, tier.latency.tokens_per_s)
        )
    running = simulator.start_in_thread(simulator.SimulatorConfig(profiles=profiles, speed=speed))
    os.environ["DEEPSEEK_API_BASE"] = running.url
    os.environ["DEEPSEEK_ANTHROPIC_API_BASE"] = running.url + "/anthropic"
    os.environ["FLASHPRO_SIMULATED"] = "true"
    for tier in policy.tiers.values():
        os.environ[tier.api_key_env] = "sk-simulated-upstream"
    banner = "=" * 78
    print(
        f"{banner}\n  SIMULATED UPSTREAM: requests go to flashpro's simulated DeepSeek server at\n"
        f"  {running.url}, not to DeepSeek. Answers are synthetic. Drop --simulate and set\n"
        f"  DEEPSEEK_API_KEY to use the real API. Latency: x{speed:g} of DeepSeek's\n"
        f"  (--simulate-speed 1 for real pacing).\n{banner}",
        file=sys.stderr,
        flush=True,
    )
