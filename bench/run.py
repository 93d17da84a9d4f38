"""flashpro beside the upstream alone and beside LiteLLM's proxy, in one run. Does I/O: starts
processes (simulated DeepSeek, flashpro, LiteLLM's proxy, redis-server, nginx) and drives wrk.

Run: make bench   (or: python bench/run.py [--seconds 8] [--streams 1000] [--no-litellm-proxy])

Non-streaming: wrk at 8 and 64 keep-alive connections against the simulator at speed 0 (no latency:
what is measured is the proxy), directly and through each proxy; flashpro with its direct transport
(chat completions and the Responses front door) and with litellm, with 1 and 2 uvicorn workers, two
processes sharing one Redis behind nginx, and a cache-hit path. Streaming: N concurrent streams of
the pro-max tier from the simulator at speed 1 (35 tokens/s), chunk arrival gaps compared with the
upstream alone. Also CPU and peak RSS of each flashpro process tree, and the classifier's scoring
time. Prints a table; writes bench/results/bench-<time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    ROOT,
    VARY,
    Load,
    cpu_seconds,
    free_port,
    load_average,
    redis_command,
    rss_mb,
    running,
    wait_ready,
    wrk,
)

KEY = "sk-bench-upstream-0123456789"
BENCH_VENV = ROOT / ".bench-venv"
PYTHON = sys.executable
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# every non-cached request differs (wrk numbers the marker), as real traffic does: no target
# may answer from a memo of an identical body
NUMBERED = [{"role": "user", "content": f"Question {VARY}: what is the capital of France?"}]
PROOF = [{"role": "user", "content": f"Prove that there are infinitely many primes ({VARY})."}]
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


def body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# What each target is asked: the same question, the same upstream model (Flash, no thinking).
PLAIN = {
    "direct": body(model="deepseek-v4-flash", messages=NUMBERED, thinking={"type": "disabled"}),
    "flashpro": body(model="flash", messages=NUMBERED),
    "litellm": body(model="flash", messages=NUMBERED),
}
CACHEABLE = body(model="flash", messages=QUESTION, temperature=0)
# the same question through the Responses front door (translated to the same chat request)
RESPONSES = body(model="flash", input=f"Question {VARY}: what is the capital of France?")
RESPONSES_STREAM = body(model="pro-max", input=PROOF[0]["content"], stream=True)
# The Anthropic Messages door, and the same call straight to the simulator's Anthropic API
MESSAGES = {
    "direct": body(
        model="deepseek-v4-flash",
        max_tokens=400,
        messages=NUMBERED,
        thinking={"type": "disabled"},
    ),
    "flashpro": body(model="flash", max_tokens=400, messages=NUMBERED),
}
STREAM = {
    "direct": body(
        model="deepseek-v4-pro",
        messages=PROOF,
        stream=True,
        thinking={"type": "enabled"},
        reasoning_effort="max",
    ),
    "flashpro": body(model="pro-max", messages=PROOF, stream=True),
    "litellm": body(model="pro-max", messages=PROOF, stream=True),
}


def simulator(port: int, speed: float) -> list[str]:
    return [
        PYTHON,
        "-m",
        "router",
        "simulate-upstream",
        "--port",
        str(port),
        "--speed",
        str(speed),
        "--api-key",
        KEY,
        "--tokens-per-s",
        "deepseek-v4-pro=35",
        "--max-output-tokens",
        "200",
    ]


@contextmanager
def flashpro(upstream: str, workers: int = 1, **env: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    args = [
        PYTHON,
        "-m",
        "router",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    settings = {
        **ENV,
        "DEEPSEEK_API_BASE": upstream,
        "DEEPSEEK_ANTHROPIC_API_BASE": upstream + "/anthropic",
        "DEEPSEEK_API_KEY": KEY,
        "FLASHPRO_POLICY_POLL_SECONDS": "0",
        **env,
    }
    with running(args, port, "flashpro", settings) as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        yield url, process.pid


def ensure_litellm_proxy() -> Path | None:
    """The `litellm` command from a benchmark-only venv, created on first use."""
    binary = BENCH_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"creating {BENCH_VENV} with litellm[proxy] (benchmark only) ...", flush=True)
    try:
        subprocess.run([PYTHON, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run(
            [str(BENCH_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True
        )
    except subprocess.CalledProcessError as exc:
        print(f"cannot install litellm[proxy] here ({exc}); skipping LiteLLM's proxy")
        return None
    return binary if binary.exists() else None


@contextmanager
def litellm_proxy(binary: Path, upstream: str, workdir: Path) -> Iterator[tuple[str, int]]:
    config = {
        "model_list": [
            {
                "model_name": "flash",
                "litellm_params": {
                    "model": "deepseek/deepseek-v4-flash",
                    "api_base": upstream,
                    "api_key": KEY,
                    "thinking": {"type": "disabled"},
                },
            },
            {
                "model_name": "pro-max",
                "litellm_params": {
                    "model": "deepseek/deepseek-v4-pro",
                    "api_base": upstream,
                    "api_key": KEY,
                    "thinking": {"type": "enabled"},
                    "reasoning_effort": "max",
                },
            },
        ],
        "litellm_settings": {"num_retries": 0, "request_timeout": 600},
    }
    path = workdir / f"litellm-{free_port()}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    port = free_port()
    args = [
        str(binary),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {**ENV, "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    with running(args, port, "litellm proxy", env) as process:
        yield f"http://127.0.0.1:{port}", process.pid


NGINX = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream flashpro {{
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://flashpro;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""


@contextmanager
def balanced(upstream: str, workdir: Path) -> Iterator[tuple[str, int] | None]:
    """Two flashpro processes sharing one redis-server, behind nginx (None if either is missing)."""
    nginx, redis = shutil.which("nginx"), shutil.which("redis-server")
    if nginx is None or redis is None:
        print("nginx or redis-server missing: skipping the two-process run")
        yield None
        return
    redis_port = free_port()
    redis_args = redis_command(redis, redis_port)
    with ExitStack() as stack:
        stack.enter_context(running(redis_args, redis_port, "redis-server"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        ports = [stack.enter_context(flashpro(upstream, REDIS_URL=redis_url)) for _ in range(2)]
        port = free_port()
        config = workdir / "nginx.conf"
        config.write_text(
            NGINX.format(
                user="user root;" if os.geteuid() == 0 else "",
                dir=workdir,
                port=port,
                servers="\n".join(f"    server {url.removeprefix('http://')};" for url, _ in ports),
            )
        )
        stack.enter_context(
            running(
                [nginx, "-c", str(config), "-p", str(workdir), "-e", str(workdir / "error.log")],
                port,
                "nginx",
            )
        )
        yield f"http://127.0.0.1:{port}", ports[0][1]


def streams(url: str, n: int, request: bytes, pid: int | None) -> dict[str, Any]:
    bearer = KEY if pid is None else "bench"  # the upstream alone wants its own key
    before = cpu_seconds(pid) if pid else 0.0
    started = time.monotonic()
    output = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "streams.py"), url, str(n), request.decode(), bearer],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    if pid:
        result["cpu_pct"] = (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100
        result["peak_rss_mb"] = rss_mb(pid, peak=True)
    return result


def time_classifier(samples: int = 2000) -> dict[str, float]:
    from router.routing.classify import load_classifier
    from router.schemas import ChatRequest

    classifier = load_classifier(None)
    prompts = [
        "What is the capital of France?",
        "Prove that the square root of 2 is irrational, step by step.",
        "Write a Python function that merges two sorted lists, with tests. " * 5,
        "Translate 'good morning' into French.",
    ]
    requests = [
        ChatRequest.model_validate(
            {
                "model": "auto",
                "messages": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": p},
                ],
            }
        )
        for p in prompts
    ]
    for request in requests:
        classifier.assess(request)
    times = []
    for i in range(samples):
        request = requests[i % len(requests)]
        started = time.perf_counter_ns()
        classifier.assess(request)
        times.append((time.perf_counter_ns() - started) / 1000)
    times.sort()
    return {
        "mean_us": sum(times) / len(times),
        "p50_us": times[len(times) // 2],
        "p99_us": times[int(len(times) * 0.99)],
    }


def check_cache_hit(url: str) -> None:
    for _ in range(2):
        response = httpx.post(
            url + "/v1/chat/completions",
            content=CACHEABLE,
            timeout=10,
            headers={"content-type": "application/json", "authorization": "Bearer bench"},
        )
        response.raise_for_status()
    if response.headers.get("x-flashpro-cache") != "hit":
        raise RuntimeError(f"expected a cache hit, got {response.headers.get('x-flashpro-cache')}")


def install_missing(tools: tuple[str, ...]) -> None:
    """On a fresh Debian machine, install the load tool and servers with apt-get (as root);
    elsewhere say what is missing (nginx and redis-server only skip the balanced run)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing or shutil.which("apt-get") is None or os.geteuid() != 0:
        return
    print(f"installing {', '.join(missing)} with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(prog="flashpro bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="wrk duration per measurement")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams")
    parser.add_argument("--no-litellm-proxy", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--no-streams", action="store_true", help="skip the streaming part")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()
    install_missing(("wrk", "nginx", "redis-server"))
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk")
        return 2
    seconds = args.seconds
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpus": os.cpu_count(),
        "load_before": load_average(),
        "load": [],
        "classifier": time_classifier(),
    }
    rows: dict[str, dict[str, Any]] = {}
    binary = None if args.no_litellm_proxy else ensure_litellm_proxy()
    bench_auth = {"Authorization": "Bearer bench"}

    def measure(
        name: str, url: str, request: bytes, pid: int | None, bearer: str = "bench"
    ) -> None:
        auth = {"Authorization": f"Bearer {bearer}"}
        wrk(url, request, 8, 1, auth)  # warm-up
        row: dict[str, Any] = {}
        for connections in (8, 64):
            load: Load = wrk(url, request, connections, seconds, auth, pid)
            row[f"c{connections}"] = asdict(load)
            results["load"].append(load_average()[0])
        if pid:
            row["rss_mb"] = rss_mb(pid)
        rows[name] = row
        print(f"  measured {name}", flush=True)

    with tempfile.TemporaryDirectory(prefix="flashpro-bench-") as tmp:
        workdir = Path(tmp)
        sim_port = free_port()
        with running(simulator(sim_port, 0), sim_port, "simulator"):
            upstream = f"http://127.0.0.1:{sim_port}"
            chat = "/chat/completions"
            measure("upstream alone", upstream + chat, PLAIN["direct"], None, KEY)
            anthropic = upstream + "/anthropic/v1/messages"
            measure("upstream alone /v1/messages", anthropic, MESSAGES["direct"], None, KEY)
            for name, transport, workers in (
                ("flashpro direct transport", "direct", 1),
                ("flashpro litellm transport", "litellm", 1),
                ("flashpro direct, 2 workers", "direct", 2),
            ):
                with flashpro(upstream, workers, FLASHPRO_TRANSPORT=transport) as (url, pid):
                    measure(name, url + "/v1/chat/completions", PLAIN["flashpro"], pid)
                    if workers == 1 and transport == "direct":
                        measure("flashpro /v1/responses", url + "/v1/responses", RESPONSES, pid)
                        messages = url + "/v1/messages"
                        measure("flashpro /v1/messages", messages, MESSAGES["flashpro"], pid)
                        check_cache_hit(url)
                        hit = wrk(
                            url + "/v1/chat/completions", CACHEABLE, 8, seconds, bench_auth, pid
                        )
                        rows["flashpro cache hit"] = {"c8": asdict(hit)}
            with balanced(upstream, workdir) as target:
                if target is not None:
                    measure(
                        "2 flashpro + redis behind nginx",
                        target[0] + "/v1/chat/completions",
                        PLAIN["flashpro"],
                        None,
                    )
            if binary is not None:
                with litellm_proxy(binary, upstream, workdir) as (url, pid):
                    measure("LiteLLM proxy", url + "/v1/chat/completions", PLAIN["litellm"], pid)
        if not args.no_streams:
            results["streams"] = stream_part(args.streams, binary, workdir)
    results["rows"] = rows
    results["load_after"] = load_average()
    report(results)
    out = args.out or ROOT / "bench" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


def stream_part(n: int, binary: Path | None, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    with running(simulator(port, 1), port, "simulator (speed 1)"):
        upstream = f"http://127.0.0.1:{port}"
        out["upstream alone"] = streams(upstream + "/chat/completions", n, STREAM["direct"], None)
        print("  measured streams: upstream alone", flush=True)
        for name, transport in (("flashpro", "direct"), ("flashpro litellm transport", "litellm")):
            with flashpro(upstream, FLASHPRO_TRANSPORT=transport) as (url, pid):
                out[name] = streams(url + "/v1/chat/completions", n, STREAM["flashpro"], pid)
                print(f"  measured streams: {name}", flush=True)
                if transport == "direct":
                    responses = streams(url + "/v1/responses", n, RESPONSES_STREAM, pid)
                    out["flashpro /v1/responses"] = responses
                    print("  measured streams: flashpro /v1/responses", flush=True)
        if binary is not None:
            with litellm_proxy(binary, upstream, workdir) as (url, pid):
                out["LiteLLM proxy"] = streams(
                    url + "/v1/chat/completions", n, STREAM["litellm"], pid
                )
            print("  measured streams: LiteLLM proxy", flush=True)
    return out


def report(results: dict[str, Any]) -> None:
    rows = results["rows"]
    base = rows.get("upstream alone", {})
    print(
        f"\nflashpro benchmark {results['started']}, {results['cpus']} CPUs, load average "
        f"{results['load_before'][0]:.1f} before, {max(results['load'] or [0]):.1f} peak "
        "during, 1 wrk thread (2 at 64 connections)"
    )
    header = (
        f"{'target':<34}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'cpu %':>7}{'err':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        for key in ("c8", "c64"):
            if key not in row:
                continue
            load = row[key]
            # each proxied row against the upstream alone in its own format
            alone = rows.get("upstream alone /v1/messages", {}) if "/v1/messages" in name else base
            added = (
                load["p50_ms"] - alone[key]["p50_ms"]
                if key in alone and not name.startswith("upstream alone")
                else None
            )
            cpu = f"{load['cpu_pct']:.0f}" if load.get("cpu_pct") is not None else "-"
            print(
                f"{name:<34}{key[1:]:>5}{load['requests_s']:>9.0f}{load['p50_ms']:>9.2f}"
                f"{load['p90_ms']:>9.2f}{load['p99_ms']:>9.2f}"
                f"{(f'{added:.2f}' if added is not None else '-'):>9}{cpu:>7}{load['errors']:>6}"
            )
    proxy = rows.get("LiteLLM proxy")
    ours = rows.get("flashpro direct transport")
    for door in ("/v1/responses", "/v1/messages"):
        other = rows.get(f"flashpro {door}")
        if not (other and ours):
            continue
        for key in ("c8", "c64"):
            added = other[key]["p50_ms"] - ours[key]["p50_ms"]
            ratio = other[key]["requests_s"] / ours[key]["requests_s"]
            print(
                f"{door} vs chat completions at {key[1:]} connections: {added:+.2f} ms "
                f"p50, {ratio:.2f}x the throughput"
            )
    messages, alone = rows.get("flashpro /v1/messages"), rows.get("upstream alone /v1/messages")
    if messages and alone and ours:
        for key in ("c8", "c64"):
            added = messages[key]["p50_ms"] - alone[key]["p50_ms"]
            chat_added = ours[key]["p50_ms"] - base[key]["p50_ms"]
            print(
                f"/v1/messages adds {added:.2f} ms p50 over its upstream at {key[1:]} connections "
                f"(chat completions: {chat_added:.2f} ms)"
            )
    if proxy and ours:
        for key in ("c8", "c64"):
            ratio = ours[key]["requests_s"] / proxy[key]["requests_s"]
            latency = proxy[key]["p50_ms"] / ours[key]["p50_ms"]
            print(
                f"flashpro vs LiteLLM proxy at {key[1:]} connections: {ratio:.1f}x the "
                f"throughput, {latency:.1f}x lower p50"
            )
    if "streams" in results:
        print("\nconcurrent streams (pro-max, 35 tokens/s)")
        print(
            f"{'target':<28}{'done':>6}{'fail':>6}{'ttft p50':>10}{'gap p50':>9}{'gap p90':>9}"
            f"{'gap p99':>9}{'gap max':>9}{'+p99':>8}{'cpu %':>7}{'peak MB':>9}"
        )
        direct = results["streams"].get("upstream alone", {})
        for name, s in results["streams"].items():
            added = s["gap_p99_ms"] - direct["gap_p99_ms"] if name != "upstream alone" else None
            print(
                f"{name:<28}{s['completed']:>6}{s['failed']:>6}{s['ttft_p50_ms']:>10.0f}"
                f"{s['gap_p50_ms']:>9.1f}{s['gap_p90_ms']:>9.1f}{s['gap_p99_ms']:>9.1f}"
                f"{s['gap_max_ms']:>9.0f}{(f'{added:.1f}' if added is not None else '-'):>8}"
                f"{s.get('cpu_pct', 0):>7.0f}{s.get('peak_rss_mb', 0):>9.0f}"
            )
    c = results["classifier"]
    print(
        f"\nclassifier assess: mean {c['mean_us']:.0f} us, p50 {c['p50_us']:.0f} us, "
        f"p99 {c['p99_us']:.0f} us"
    )


if __name__ == "__main__":
    sys.exit(main())
