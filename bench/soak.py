"""Soak: mixed streaming and whole requests with injected faults against a real `flashpro serve`
process (simulated upstream, optional Redis), for a bounded time. Reports requests sent,
answered, failed with a proper error, and lost (must be zero), and flashpro's RSS at start and
end. Run: `make soak` (or `python bench/soak.py --seconds 150`). The judging here is also what
tests/test_faults.py uses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import wait_ready  # noqa: E402
from router.routing.cost import Usage, cost_usd  # noqa: E402
from router.routing.policy import Policy  # noqa: E402

Verdict = Literal["answered", "failed", "lost"]
PROPER_STATUSES = frozenset({400, 401, 404, 413, 422, 429, 502, 503, 504})
SOAK_KEY = "sk-soak-upstream-0123456789"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None = None
    cost_usd: float = 0.0  # what flashpro charged the ledger for an answered request
    tier: str | None = None
    body: Any = None
    why: str = ""


def is_envelope(data: Any) -> bool:
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def judge_whole(response: httpx.Response) -> Outcome:
    try:
        data = response.json()
    except ValueError:
        return Outcome("lost", response.status_code, why="body is not JSON")
    if response.status_code == 200 and isinstance(data, dict) and data.get("choices"):
        cost = float(response.headers.get("x-flashpro-cost-usd", "nan"))
        return Outcome("answered", 200, cost, response.headers.get("x-flashpro-tier"), data)
    if response.status_code in PROPER_STATUSES and is_envelope(data):
        if response.status_code == 429 and "retry-after" not in response.headers:
            return Outcome("lost", 429, why="429 without Retry-After")
        return Outcome("failed", response.status_code, body=data)
    return Outcome("lost", response.status_code, why=response.text[:200])


def judge_stream(response: httpx.Response, lines: list[str], policy: Policy) -> Outcome:
    """A stream is answered when it ends with [DONE] after a finish_reason, failed when it ends
    with an error event then [DONE] (or was refused with a proper status), else lost."""
    if response.status_code != 200:
        try:
            data = orjson.loads("\n".join(lines) or "null")
        except orjson.JSONDecodeError:
            return Outcome("lost", response.status_code, why="error body is not JSON")
        ok = response.status_code in PROPER_STATUSES and is_envelope(data)
        return Outcome("failed" if ok else "lost", response.status_code, body=data)
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return Outcome("lost", 200, why="stream did not end with [DONE]")
    chunks = [orjson.loads(event) for event in events[:-1]]
    if chunks and is_envelope(chunks[-1]):
        return Outcome("failed", 200, body=chunks[-1])
    finished = any(c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", []))
    if not finished:
        return Outcome("lost", 200, why="stream ended without a finish_reason")
    usage = next((chunk["usage"] for chunk in chunks if chunk.get("usage")), None)
    tier = response.headers.get("x-flashpro-tier")
    cost = 0.0
    if usage is not None and tier in policy.tiers and response.headers["x-flashpro-cache"] != "hit":
        cost = cost_usd(Usage.from_wire(usage), policy.prices_at(tier, datetime.now(UTC)))
    return Outcome("answered", 200, cost, tier, chunks)


def send(
    client: httpx.Client, base: str, body: dict[str, Any], policy: Policy, **headers: str
) -> Outcome:
    """One request, judged; a transport error or a timeout is `lost`."""
    url = base + "/v1/chat/completions"
    try:
        if not body.get("stream"):
            return judge_whole(client.post(url, json=body, headers=headers))
        with client.stream("POST", url, json=body, headers=headers) as response:
            return judge_stream(response, list(response.iter_lines()), policy)
    except httpx.HTTPError as exc:
        return Outcome("lost", why=f"{type(exc).__name__}: {exc}")


def chat_body(
    text: str, model: str = "flash", stream: bool = False, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return {**body, **extra}


def soak_policy(timeout_s: float = 1.0, **sections: Any) -> dict[str, Any]:
    """The default policy with short timeouts and backoffs (and `sections` set on top)."""
    text = resources.files("router").joinpath("data/default.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    for tier in data["tiers"].values():
        tier["timeout_s"] = timeout_s
    data["retries"] = {
        "max_attempts": 2,
        "backoff_initial_ms": 5,
        "backoff_max_ms": 20,
        "retry_after_max_s": 0.05,
    }
    data["breaker"] = {"failures": 1000, "open_seconds": 1}
    data.update(sections)
    return data


FAULTS = [
    "",
    "",
    "",
    " [[sim:status=429]]",
    " [[sim:status=500]]",
    " [[sim:delay_ms=1500]]",
    " [[sim:slow=5]]",
    " [[sim:disconnect_after=3]]",
]


def random_body(rng: random.Random) -> dict[str, Any]:
    fault = rng.choice(FAULTS)
    stream = rng.random() < 0.5
    model = rng.choice(["flash", "flash", "pro", "pro-max", "auto"])
    if rng.random() < 0.2:  # a small pool of repeatable prompts: cache hits and coalescing
        return chat_body(f"cached {rng.randrange(5)}", model, stream, temperature=0)
    return chat_body(f"soak {uuid.uuid4().hex[:8]}{fault}", model, stream)


@dataclass
class Report:
    seconds: float
    sent: int
    answered: int
    failed: int
    lost: int
    statuses: dict[str, int]
    lost_examples: list[str]
    rss_start_kib: int | None = None
    rss_end_kib: int | None = None

    def lines(self) -> str:
        rss = f"RSS start {self.rss_start_kib} KiB, end {self.rss_end_kib} KiB"
        return (
            f"soak {self.seconds:.0f}s: sent {self.sent}, answered {self.answered}, "
            f"failed with a proper error {self.failed}, lost {self.lost}; {rss}\n"
            f"statuses: {self.statuses}" + "".join(f"\n  lost: {why}" for why in self.lost_examples)
        )


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().split("\n"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def soak(
    base: str,
    sim_url: str,
    policy: Policy,
    seconds: float,
    concurrency: int = 16,
    pid: int | None = None,
    seed: int = 7,
) -> Report:
    """Send traffic until `seconds` pass; every few seconds queue transient upstream faults."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    start_rss = rss_kib(pid)
    started = time.monotonic()
    deadline = started + seconds

    def worker(n: int) -> None:
        local = random.Random(seed + n)
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                outcomes.append(send(client, base, random_body(local), policy))

    with ThreadPoolExecutor(concurrency + 1) as pool:
        futures = [pool.submit(worker, n) for n in range(concurrency)]
        while time.monotonic() < deadline:
            fault = rng.choice([{"status": 429, "retry_after": 0.01}, {"status": 503}])
            httpx.post(sim_url + "/_sim/faults", json={"count": 3, **fault}, timeout=5)
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0)))
        for future in futures:
            future.result()
    httpx.delete(sim_url + "/_sim/faults", timeout=5)
    verdicts = Counter(o.verdict for o in outcomes)
    statuses = Counter(str(o.status) for o in outcomes)
    return Report(
        seconds=time.monotonic() - started,
        sent=len(outcomes),
        answered=verdicts["answered"],
        failed=verdicts["failed"],
        lost=verdicts["lost"],
        statuses=dict(sorted(statuses.items())),
        lost_examples=[o.why for o in outcomes if o.verdict == "lost"][:5],
        rss_start_kib=start_rss,
        rss_end_kib=rss_kib(pid),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--speed", type=float, default=0.01, help="simulator latency scale")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from router.routing.policy import parse_policy
    from router.simulator.server import SimulatorConfig, default_profiles, start_in_thread

    sim = start_in_thread(
        SimulatorConfig(profiles=default_profiles(), speed=args.speed, api_key=SOAK_KEY)
    )
    with tempfile.TemporaryDirectory() as tmp:
        text = yaml.safe_dump(soak_policy())
        path = Path(tmp) / "soak.yaml"
        path.write_text(text)
        policy = parse_policy(text)
        port = _free_port()
        env = {
            **os.environ,
            "DEEPSEEK_API_BASE": sim.url,
            "DEEPSEEK_API_KEY": SOAK_KEY,
            "FLASHPRO_POLICY_POLL_SECONDS": "0",
        }
        if args.redis_url:
            env["REDIS_URL"] = args.redis_url
        command = [sys.executable, "-m", "router", "serve", "--policy", str(path)]
        process = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "error"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,  # one JSON log line per request
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, "/healthz")
            report = soak(base, sim.url, policy, args.seconds, args.concurrency, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=40)
            sim.stop()
    print(json.dumps(report.__dict__, indent=2) if args.json else report.lines())
    return 1 if report.lost else 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
