"""Open N concurrent SSE streams and time when each event arrives. Run as its own process.

Usage: python bench/streams.py URL N BODY_JSON BEARER  -> one JSON object on stdout.

Raw HTTP/1.1 over asyncio (uvloop when installed), one connection per stream, so the client costs
little next to the server it measures; the same client measures the upstream directly, and the
difference between the two gap distributions is what the proxy adds per chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from urllib.parse import urlsplit

_MARK = b"data: "
VARY = b"@N@"  # as bench/harness.py


async def one(
    host: str, port: int, path: str, body: bytes, bearer: str, start: asyncio.Event
) -> list[float]:
    """Arrival times of the stream's events (seconds from sending the request)."""
    await start.wait()
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    sent = time.perf_counter()
    writer.write(head + body)
    arrivals: list[float] = []
    tail = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter() - sent
            window = tail + data
            arrivals.extend([now] * window.count(_MARK))
            tail = window[-(len(_MARK) - 1) :]
            if b"[DONE]" in window:
                break
    finally:
        writer.close()
    return arrivals[:-1] if arrivals else arrivals  # the [DONE] marker is not a chunk


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main(url: str, n: int, body: bytes, bearer: str) -> dict[str, object]:
    parts = urlsplit(url)
    start = asyncio.Event()
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tasks = [  # a VARY marker in the body becomes the stream's number: no two streams alike
        asyncio.create_task(
            one(host, port, parts.path, body.replace(VARY, b"%d" % i), bearer, start)
        )
        for i in range(n)
    ]
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - began
    streams = [r for r in results if isinstance(r, list) and len(r) > 1]
    gaps = [b - a for arrivals in streams for a, b in itertools.pairwise(arrivals)]
    ttft = [arrivals[0] for arrivals in streams]
    ms = 1000.0
    return {
        "streams": n,
        "completed": len(streams),
        "failed": n - len(streams),
        "chunks": sum(len(a) for a in streams),
        "wall_s": round(wall, 2),
        "ttft_p50_ms": percentile(ttft, 0.5) * ms,
        "ttft_p99_ms": percentile(ttft, 0.99) * ms,
        "gap_p50_ms": percentile(gaps, 0.5) * ms,
        "gap_p90_ms": percentile(gaps, 0.9) * ms,
        "gap_p99_ms": percentile(gaps, 0.99) * ms,
        "gap_max_ms": max(gaps, default=float("nan")) * ms,
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]))
    print(json.dumps(result))
