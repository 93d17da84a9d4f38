"""The server edge, fast path and hostile path, in one run: uvicorn's stock httptools protocol
beside flashpro's bounded one (router/http/server.py), both serving the same app. Does I/O:
starts the simulated DeepSeek and the two servers, drives wrk and raw sockets.

Run: python bench/edges.py [--seconds 6] [--rounds 2] [--baseline ../main]

0. protocol CPU: in this process, each protocol fed 20,000 keep-alive requests over a stub
   transport, answered by a two-byte ASGI app: CPU µs per request (thread time, robust to a
   busy machine), five rounds each, medians.
1. throughput: wrk, 8 keep-alive connections, a different flash question each request, the
   simulator at speed 0; the two servers take turns `--rounds` times; req/s, p50 and CPU per
   request, and the ratio bounded / stock of the medians.
2. memory: 50 requests, each with a different 10 MB bearer token; RSS before and after.
3. slowloris: 1,000 connections each sending part of a request head and then nothing; after the
   head deadline (2 s here), how many the server still holds, and whether a normal request is
   answered meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, VARY, free_port, rss_mb, running, wait_ready, wrk

KEY = "sk-bench-upstream-0123456789"
PYTHON = sys.executable
HEAD_TIMEOUT_S = 2.0
QUESTION = [{"role": "user", "content": f"Question {VARY}: what is the capital of France?"}]
PLAIN = orjson.dumps({"model": "flash", "messages": QUESTION})
HELLO = orjson.dumps({"model": "flash", "messages": [{"role": "user", "content": "hello"}]})
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


def serve(kind: str, port: int) -> None:
    """Run the app on `port` with the stock or the bounded protocol (the child process)."""
    import uvicorn

    options = {"factory": True, "port": port, "log_level": "warning", "access_log": False}
    if kind == "stock":
        uvicorn.Server(uvicorn.Config("router.app:app_from_env", http="httptools", **options)).run()
        return
    from router.http.server import EdgeLimits, FlashproConfig

    limits = EdgeLimits(header_timeout_s=HEAD_TIMEOUT_S)
    uvicorn.Server(FlashproConfig("router.app:app_from_env", edges=limits, **options)).run()


@contextmanager
def server(kind: str, upstream: str, root: Path = ROOT) -> Iterator[tuple[str, int]]:
    """The app from the checkout at `root` (its `router` package) on the `kind` protocol."""
    port = free_port()
    env = {
        **ENV,
        "DEEPSEEK_API_BASE": upstream,
        "DEEPSEEK_API_KEY": KEY,
        "FLASHPRO_POLICY_POLL_SECONDS": "0",
        "FLASHPRO_ACCESS_LOG": "false",
        "PYTHONPATH": str(root),
    }
    args = [PYTHON, __file__, "--serve", kind, "--port", str(port)]
    with running(args, port, f"flashpro-{kind}", env) as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, "/healthz")
        yield url, process.pid


class StubTransport(asyncio.Transport):
    """Takes the answers and drops them; a loopback peer for the protocol CPU measurement."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def two_bytes(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


def protocol_cpu_us(kind: str, requests: int = 20_000) -> float:
    """CPU µs per request of uvicorn's stock httptools protocol or the bounded one."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from router.http.server import BoundedHttpTools, FlashproConfig

    loop = asyncio.new_event_loop()
    options: dict[str, Any] = {"log_level": "warning", "access_log": False}
    config = (
        uvicorn.Config(two_bytes, http="httptools", **options)
        if kind == "stock"
        else FlashproConfig(two_bytes, **options)
    )
    config.load()
    protocol_class = HttpToolsProtocol if kind == "stock" else BoundedHttpTools
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
    protocol.connection_made(StubTransport())
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nuser-agent: bench\r\n"
    request = head + b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    async def drive() -> None:
        for _ in range(requests):
            protocol.data_received(request)
            while state.tasks:
                await asyncio.sleep(0)

    started = time.thread_time()
    loop.run_until_complete(drive())
    spent = time.thread_time() - started
    protocol.connection_lost(None)
    loop.close()
    return spent / requests * 1e6


def throughput(url: str, pid: int, seconds: float) -> tuple[float, float, float]:
    """(req/s, p50 ms, CPU µs per request) at 8 connections."""
    load = wrk(url + "/v1/chat/completions", PLAIN, 8, seconds, server_pid=pid)
    if load.errors:
        raise RuntimeError(f"{load.errors} failed requests")
    cpu_us = (load.cpu_pct or 0) / 100 / load.requests_s * 1e6
    return load.requests_s, load.p50_ms, cpu_us


def big_bearer(port: int, n: int) -> str:
    """One request with a 10 MB bearer token; what came back (status line or the failure)."""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(HELLO)}\r\nauthorization: Bearer {n:08d}"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head + b"k" * 10_000_000 + b"\r\n\r\n" + HELLO)
            return sock.recv(64).split(b"\r\n", 1)[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__


def memory(url: str, pid: int) -> tuple[float, float, dict[str, int]]:
    port = int(url.rsplit(":", 1)[1])
    before = rss_mb(pid)
    outcomes: dict[str, int] = {}
    for n in range(50):
        outcome = big_bearer(port, n)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    time.sleep(0.5)
    return before, rss_mb(pid), outcomes


def still_open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (no EOF yet; an answer may come first)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def slowloris(url: str, count: int = 1000) -> tuple[int, int, bool]:
    """(connections opened, still open after the head deadline, a normal request answered)."""
    port = int(url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
        held.append(sock)
    served = httpx.post(url + "/v1/chat/completions", content=HELLO, timeout=10).status_code == 200
    time.sleep(HEAD_TIMEOUT_S + 1.5)
    open_now = sum(still_open(sock) for sock in held)
    for sock in held:
        sock.close()
    return count, open_now, served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="the stock server runs the app of this checkout (e.g. the main branch's) instead of "
        "this one's: a before/after of the whole change, not just of the protocol",
    )
    parser.add_argument("--serve", choices=["stock", "bounded"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    os.chdir(ROOT)
    cpu: dict[str, list[float]] = {"stock": [], "bounded": []}
    for _ in range(5):
        for kind in cpu:
            cpu[kind].append(protocol_cpu_us(kind))
    for kind, runs in cpu.items():
        shown = " ".join(f"{us:.1f}" for us in runs)
        print(
            f"{kind:8} protocol CPU per request: {shown} µs (median {statistics.median(runs):.1f})"
        )
    added = statistics.median(cpu["bounded"]) - statistics.median(cpu["stock"])
    print(f"the bounded protocol adds {added:.1f} µs of CPU per request")
    sim_port = free_port()
    sim = [PYTHON, "-m", "router", "simulate-upstream", "--port", str(sim_port), "--speed", "0"]
    sim += ["--api-key", KEY]
    rates: dict[str, list[tuple[float, float, float]]] = {"stock": [], "bounded": []}
    with ExitStack() as stack:
        stack.enter_context(running(sim, sim_port, "simulator", ENV))
        upstream = f"http://127.0.0.1:{sim_port}"
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for _ in range(args.rounds):
            for kind in ("stock", "bounded"):
                root = args.baseline if kind == "stock" and args.baseline else ROOT
                with server(kind, upstream, root) as (url, pid):
                    throughput(url, pid, 1)  # warm-up
                    rates[kind].append(throughput(url, pid, args.seconds))
        for kind, runs in rates.items():
            shown = ", ".join(f"{r:.0f} req/s p50 {p:.2f} ms {c:.0f} µs CPU" for r, p, c in runs)
            print(f"{kind:8} 8 connections: {shown}")
        stock = statistics.median(r for r, _, _ in rates["stock"])
        bounded = statistics.median(r for r, _, _ in rates["bounded"])
        print(f"bounded / stock throughput (medians): {bounded / stock:.3f}")
        for kind in ("stock", "bounded"):
            root = args.baseline if kind == "stock" and args.baseline else ROOT
            with server(kind, upstream, root) as (url, pid):
                before, after, outcomes = memory(url, pid)
                print(f"{kind:8} 50 x 10 MB bearer: RSS {before:.0f} -> {after:.0f} MB {outcomes}")
                opened, still, served = slowloris(url)
                print(
                    f"{kind:8} slowloris: {opened} half-sent heads, {still} still open after "
                    f"{HEAD_TIMEOUT_S + 1.5:.1f} s; a normal request answered: {served}"
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
