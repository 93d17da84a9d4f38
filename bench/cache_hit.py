"""Benchmark cache hits through the HTTP API, beside misses. Does I/O: starts processes.

Run: /work/venv/bin/python bench/cache_hit.py [--requests 4000] [--clients 8]

Starts the simulated DeepSeek server (speed 0) and one flashpro process (uvicorn), first with
the in-process cache, then with a real redis-server; warms one entry, then has N concurrent
keep-alive clients send the same request: hits, then misses (`Cache-Control: no-cache`, so every
one calls the upstream). A `floor` line times GET /healthz, a handler that does nothing, for
comparison: what the HTTP stack alone costs. The clients are a few lines of raw HTTP/1.1 over asyncio streams, so
the numbers measure flashpro rather than an HTTP client library.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, redis_command, running

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-upstream-0123456789"
BODY = orjson.dumps(
    {
        "model": "auto",
        "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
)

SIMULATOR = f"""
import sys
from router.simulator import server as simulator
config = simulator.SimulatorConfig(simulator.default_profiles(), speed=0, api_key={KEY!r})
simulator.serve(config, "127.0.0.1", int(sys.argv[1]))
"""


def request_bytes(port: int, extra_headers: str = "") -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer bench-client\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + BODY


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> str:
    """Send one request on a keep-alive connection; return its x-flashpro-cache value."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length, cache = 0, ""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lowered = name.lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"x-flashpro-cache":
            cache = value.strip().decode()
    await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"status {status.decode()}")
    return cache


async def client(
    port: int, request: bytes, count: int, deadline: float, expect: str, out: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            cache = await exchange(reader, writer, request)
            out.append(time.perf_counter() - started)
            if cache != expect:
                raise RuntimeError(f"expected x-flashpro-cache {expect}, got {cache}")
    finally:
        writer.close()


async def measure(
    port: int, request: bytes, clients: int, total: int, expect: str, budget_s: float
) -> tuple[list[float], float]:
    latencies: list[float] = []
    deadline = time.monotonic() + budget_s
    started = time.perf_counter()
    await asyncio.gather(
        *(
            client(port, request, total // clients, deadline, expect, latencies)
            for _ in range(clients)
        )
    )
    return latencies, time.perf_counter() - started


def report(label: str, latencies: list[float], elapsed: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"  {label:<6} n={len(ms):>5}  p50={p50:6.2f} ms  p99={p99:6.2f} ms  "
        f"{len(ms) / elapsed:8.0f} req/s"
    )


async def bench_flashpro(port: int, clients: int, hits: int, misses: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await exchange(reader, writer, request_bytes(port, "Cache-Control: no-cache\r\n"))
    if await exchange(reader, writer, request_bytes(port)) != "hit":
        raise RuntimeError("the warmed entry did not hit")
    writer.close()
    await measure(port, request_bytes(port), clients, 400, "hit", 5)  # warm-up, not reported
    floor = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies, elapsed = await measure(port, floor, clients, hits, "", 20)
    report("floor", latencies, elapsed)  # the framework alone: a handler that does nothing
    latencies, elapsed = await measure(port, request_bytes(port), clients, hits, "hit", 20)
    report("hit", latencies, elapsed)
    refresh = request_bytes(port, "Cache-Control: no-cache\r\n")
    latencies, elapsed = await measure(port, refresh, clients, misses, "miss", 20)
    report("miss", latencies, elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="cache hits to measure")
    parser.add_argument("--misses", type=int, default=400, help="misses to measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    args = parser.parse_args()

    python = sys.executable
    sim_port = free_port()
    simulator = [python, "-c", SIMULATOR, str(sim_port)]
    env = {
        "DEEPSEEK_API_KEY": KEY,
        "DEEPSEEK_API_BASE": f"http://127.0.0.1:{sim_port}",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    print(
        f"cache hits vs misses, {args.clients} concurrent clients, one flashpro process "
        f"({os.cpu_count()} CPUs)"
    )
    with running(simulator, sim_port, "the simulator", {}):
        backends: list[tuple[str, dict[str, str]]] = [("memory", {})]
        redis_binary = shutil.which("redis-server")
        redis_port = free_port()
        if redis_binary is not None:
            redis = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
            backends.append(("redis (near cache on, the default)", redis))
            backends.append(("redis, near cache off", {**redis, "FLASHPRO_POLICY": no_near()}))
        redis_args = redis_command(redis_binary or "redis-server", redis_port)
        with running(redis_args, redis_port, "redis-server") if redis_binary else _nothing():
            for name, extra in backends:
                port = free_port()
                serve = [
                    python,
                    "-m",
                    "uvicorn",
                    "router.app:app_from_env",
                    "--factory",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ]
                with running(serve, port, "flashpro", {**env, **extra}):
                    print(f"{name}:")
                    asyncio.run(bench_flashpro(port, args.clients, args.requests, args.misses))
    return 0


def no_near() -> str:
    """The default policy with the near cache turned off (every hit asks Redis)."""
    text = (ROOT / "policies" / "default.yaml").read_text("utf-8")
    if "near_ttl_seconds: 1 " not in text:
        raise RuntimeError("policies/default.yaml no longer sets near_ttl_seconds: 1")
    path = Path(tempfile.mkdtemp(prefix="flashpro-bench-")) / "no-near.yaml"
    path.write_text(text.replace("near_ttl_seconds: 1 ", "near_ttl_seconds: 0 "), "utf-8")
    return str(path)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    sys.exit(main())
