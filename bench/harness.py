"""Benchmark plumbing: start and stop real processes, read their CPU and memory, drive wrk.

Process metrics come from psutil when it is installed, else from /proc (Linux): CPU seconds
(utime + stime) and the peak resident set (VmHWM) of a process and all its descendants, so a
`--workers 2` server counts both workers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not start within {timeout_s}s")


def wait_ready(
    url: str, process: subprocess.Popen[bytes], path: str = "/readyz", timeout_s: float = 90
) -> None:
    """Until `url + path` answers 200 (a flashpro that also says its dependencies are wired)."""
    import httpx  # the servers' own client; the rest of this module needs only the stdlib

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited during start-up")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready")


@contextmanager
def running(
    args: list[str], port: int, what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process, wait until it accepts connections on `port`, stop it afterwards."""
    with tempfile.NamedTemporaryFile(
        prefix=f"bench-{what.replace(' ', '-')}-", suffix=".log", delete=False
    ) as log:
        process = subprocess.Popen(
            args, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_for_port(port, process, what)
        except (RuntimeError, TimeoutError):
            print(Path(log.name).read_text()[-2000:])
            raise
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.unlink(log.name)


def redis_command(binary: str, port: int) -> list[str]:
    """A throwaway redis-server on loopback: no persistence."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def _descendants(pid: int) -> list[int]:
    pids = [pid]
    for current in pids:
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            pids.extend(int(child) for child in children)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree, in seconds."""
    total = 0
    for each in _descendants(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def rss_mb(pid: int, peak: bool = False) -> float:
    """Resident memory of a process tree in MB (peak = VmHWM, else VmRSS)."""
    key = "VmHWM:" if peak else "VmRSS:"
    total = 0
    for each in _descendants(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.split("\n"):
            if line.startswith(key):
                total += int(line.split()[1])
    return total / 1024


@dataclass
class Load:
    """One wrk run."""

    requests_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_pct: float | None = None  # of the measured server process tree; 100 = one core


VARY = "@N@"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    body: bytes,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> Load:
    """POST `body` over `connections` keep-alive connections for `seconds` (one wrk thread,
    two beyond 16 connections). A `VARY` marker in the body becomes a different number in
    every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    if VARY.encode() in body:
        head, _, tail = body.decode().partition(VARY)
        lines += [
            "local threads = 0",
            "function setup(thread)",  # each wrk thread numbers from its own offset
            "  threads = threads + 1",
            "  thread:set('offset', threads * 1000000000)",
            "end",
            "counter = 0",
            "request = function()",
            "  counter = counter + 1",
            "  local n = (offset or 0) + counter",
            f"  return wrk.format(nil, nil, nil, [==[{head}]==] .. n .. [==[{tail}]==])",
            "end",
        ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    threads = 1 if connections <= 16 else 2
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    before = cpu_seconds(server_pid) if server_pid else 0.0
    started = time.monotonic()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(server_pid) - before) / elapsed * 100 if server_pid else None
    os.unlink(script.name)
    return _parse_wrk(output, cpu)


def _parse_wrk(output: str, cpu: float | None) -> Load:
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    done = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(x) for x in socket_errors.groups())
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if rate is None or done is None or len(percentiles) < 3:
        raise RuntimeError(f"could not read wrk output:\n{output}")
    return Load(
        requests_s=float(rate.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p90_ms=_ms(percentiles["90"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(done.group(1)),
        errors=failed,
        cpu_pct=cpu,
    )


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
