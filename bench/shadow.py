"""What shadow comparisons cost and whether clients notice them: the same requests through a
flashpro with learning off and one comparing every request (sample_rate 1, floor 1), against the
simulated DeepSeek with a ground truth (answers good or poor by a hidden difficulty, a judge
wrong with `--judge-noise`), each a real process. Prints the client latency of both runs side by side (their ratio),
the labels made, the judge's agreement with itself across the swapped order, and the spend per
label, as the policy's prices put it.

    python bench/shadow.py [--requests 60] [--speed 0.05] [--judge-noise 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import free_port, running, wait_ready  # noqa: E402

KEY = "sk-bench-upstream"
LEARNING = (
    "{sample_rate: 1, floor: 1, max_per_minute: 100000, max_in_flight: 8, daily_budget_usd: 100}"
)


def prompts(n: int) -> list[str]:
    topics = ["sorting", "a proof", "tax rules", "a poem", "SQL joins", "gravity", "a bug"]
    return [f"Question {i}: explain {topics[i % len(topics)]} in detail." for i in range(n)]


def run(base: str, texts: list[str]) -> list[float]:
    """Client latency (ms) of each request, sent one after the other."""
    taken = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for text in texts:
            body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=body)
            taken.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return taken


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(policy: Path | None, sim_port: int, texts: list[str]) -> tuple[list[float], Any]:
    """One flashpro process on the simulator: the client latencies, and its learning figures
    once every comparison ended."""
    port = free_port()
    env = {"DEEPSEEK_API_BASE": f"http://127.0.0.1:{sim_port}", "DEEPSEEK_API_KEY": KEY}
    args = [sys.executable, "-m", "router", "serve", "--port", str(port), "--log-level", "warning"]
    args += ["--policy", str(policy)] if policy else []
    with running(args, port, "flashpro", env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process)
        taken = run(base, texts)
        deadline = time.monotonic() + 600
        while True:
            stats = httpx.get(base + "/v1/stats").json()["learning"]
            ended = stats["labels"] + sum(stats["failed"].values())
            done = not stats["enabled"] or (ended >= len(texts) and stats["in_flight"] == 0)
            if done or time.monotonic() > deadline:
                return taken, stats
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--speed", type=float, default=0.05, help="the simulator's latency scale")
    parser.add_argument("--judge-noise", type=float, default=0.1)
    args = parser.parse_args()
    texts = prompts(args.requests)
    default = resources.files("router").joinpath("data/default.yaml").read_text("utf-8")
    sim_port = free_port()
    simulator = [sys.executable, "-m", "router", "simulate-upstream", "--port", str(sim_port)]
    simulator += [
        "--speed",
        str(args.speed),
        "--api-key",
        KEY,
        "--judge-noise",
        str(args.judge_noise),
    ]
    simulator += ["--truth", "router.simulator.truth:hashed_difficulty"]
    with running(simulator, sim_port, "simulator"), tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(default + "\nlearning: " + LEARNING + "\n")
        plain, _ = serve(None, sim_port, [t + " (off)" for t in texts])
        compared, stats = serve(policy, sim_port, texts)
    labels = stats["labels"]
    print(f"requests {len(texts)}, simulator speed {args.speed}, judge noise {args.judge_noise}")
    print(f"{'':24}{'learning off':>14}{'learning on':>14}{'ratio':>8}")
    for name, q in (("client latency p50 ms", 0.5), ("client latency p95 ms", 0.95)):
        a, b = p(plain, q), p(compared, q)
        print(f"{name:24}{a:14.1f}{b:14.1f}{b / a:8.2f}")
    mean_a, mean_b = statistics.mean(plain), statistics.mean(compared)
    print(f"{'client latency mean ms':24}{mean_a:14.1f}{mean_b:14.1f}{mean_b / mean_a:8.2f}")
    print(f"labels {labels}, failed {stats['failed'] or 0}, skipped {stats['skipped']}")
    print(f"judgements agreeing across the swapped order: {stats['agreement']:.1%}")
    if labels:
        shadow, judge = stats["spend_usd"]["shadow"], stats["spend_usd"]["judge"]
        print(
            f"spend per label: shadow ${shadow / labels:.6f}, judge ${judge / labels:.6f}"
            f" (two judgements), together ${(shadow + judge) / labels:.6f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
