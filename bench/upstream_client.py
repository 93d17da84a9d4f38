"""CPU per request of the upstream client alone: `DirectUpstream.complete` (aiohttp with
flashpro's deadlines, caps and checks) against the simulator at speed 0 in another process, 8
requests at a time, on uvloop. `python bench/upstream_client.py [--requests 3000]`."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import uvloop

from bench.harness import free_port, wait_ready
from router.upstream.base import UpstreamCall
from router.upstream.transport import DirectUpstream

CONCURRENCY = 8


async def measure(base: str, requests: int) -> tuple[float, float]:
    """(µs of this process's CPU per request, requests per second)."""
    upstream = DirectUpstream()
    numbers = iter(range(requests))

    def call(i: int) -> UpstreamCall:
        messages = [{"role": "user", "content": f"question {i}"}]
        return UpstreamCall(
            "deepseek/deepseek-flash", messages, {}, "disabled", None, base, "sk-bench", 30.0
        )

    async def worker() -> None:
        for i in numbers:
            await upstream.complete(call(i))

    for i in range(50):  # warm the pool
        await upstream.complete(call(i))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await upstream.aclose()
    return cpu / requests * 1e6, requests / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    simulator: subprocess.Popen[bytes] = subprocess.Popen(
        [sys.executable, "-m", "router", "simulate-upstream", "--port", str(port), "--speed", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, simulator, "/v1/models")
        for _ in range(3):
            cpu_us, rate = uvloop.run(measure(base, args.requests))
            print(f"upstream client: {cpu_us:6.1f} us CPU a request, {rate:6.0f} req/s")
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


if __name__ == "__main__":
    main()
