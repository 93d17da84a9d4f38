"""Shared fixtures: a real redis-server, the simulated DeepSeek server, and flashpro on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import uvicorn
import uvloop

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from router.app import build_deps, create_app
from router.http.server import EdgeLimits, FlashproConfig
from router.pipeline import Deps
from router.settings import Settings
from router.simulator.server import (
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)

ROOT = Path(__file__).resolve().parents[1]
# uvicorn serves on uvloop in production: the upstream client's tests run on both loops
BOTH_LOOPS = frozenset({"test_client.py", "test_transport_tls.py"})
UPSTREAM_KEY = "sk-upstream-secret-0123456789"

# Fields a hostile client may send to redirect the upstream call; none may reach it.
HOSTILE_FIELDS: dict[str, object] = {
    "api_base": "http://127.0.0.2:9/evil",
    "base_url": "http://127.0.0.2:9/evil",
    "api_key": "sk-client-chosen-000000",
    "custom_llm_provider": "openai",
    "extra_headers": {"x-evil": "1"},
    "headers": {"x-evil": "1"},
    "timeout": 0.001,
    "metadata": {"a": 1},
    "fallbacks": ["gpt-4o"],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# how long a server (redis-server, flashpro in a thread or a process) may take to start
STARTUP_DEADLINE_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float = 60.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready within {timeout_s}s")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._accepts, timeout_s=STARTUP_DEADLINE_S, what="redis-server")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def simulator() -> Iterator[RunningSimulator]:
    config = SimulatorConfig(profiles=default_profiles(), speed=0.01, api_key=UPSTREAM_KEY)
    running = start_in_thread(config)
    yield running
    running.stop()


@pytest.fixture
def sim(simulator: RunningSimulator) -> RunningSimulator:
    """The shared simulator with its request log cleared for this test."""
    simulator.clear()
    return simulator


@contextmanager
def serve_app(
    settings: Settings, deps: Deps | None = None, edges: EdgeLimits | None = None
) -> Iterator[str]:
    """Run flashpro in-process (uvicorn in a thread, with the server edge `flashpro serve` uses)
    and yield its base URL."""
    port = free_port()
    config = FlashproConfig(
        create_app(settings, deps),
        edges=edges,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(base + "/healthz"), timeout_s=STARTUP_DEADLINE_S, what="flashpro")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def settings_for(simulator: RunningSimulator, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "deepseek_api_base": simulator.url,
        "deepseek_anthropic_api_base": simulator.url + "/anthropic",
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def upstream_env() -> Iterator[None]:
    """The upstream key the policy names, as a deployment would set it."""
    old = os.environ.get("DEEPSEEK_API_KEY")
    os.environ["DEEPSEEK_API_KEY"] = UPSTREAM_KEY
    yield
    if old is None:
        del os.environ["DEEPSEEK_API_KEY"]
    else:
        os.environ["DEEPSEEK_API_KEY"] = old


@pytest.fixture(scope="session")
def flashpro(simulator: RunningSimulator, upstream_env: None) -> Iterator[str]:
    """flashpro in-process with production dependencies, routed to the simulator."""
    settings = settings_for(simulator, max_body_bytes=256 * 1024)
    with serve_app(settings, build_deps(settings)) as base:
        yield base


@dataclass
class FlashproProcess:
    base: str
    process: subprocess.Popen[str]
    log: IO[str]

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        self.log.seek(0)
        return self.log.read()


@contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the caller's own, which it may stop, pause (SIGSTOP) and kill: resumed
    and stopped on the way out."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@contextmanager
def router_process(
    command: list[str],
    env: dict[str, str],
    ready_path: str,
    ready_s: float = STARTUP_DEADLINE_S,
) -> Iterator[FlashproProcess]:
    """Run `python -m router COMMAND --port N ...` as a real process, until it answers
    `ready_path`; stopped (terminated, then killed) on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    what = f"flashpro {command[0]}"
    # the output goes to a file, never an unread pipe: a full pipe would block the server
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "router", command[0], "--port", str(port), *command[1:]],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def ready() -> bool:
            if process.poll() is not None:
                output.seek(0)
                raise RuntimeError(f"{what} exited {process.returncode}: {output.read()}")
            return http_ok(base + ready_path)

        try:
            # a deadline, not a pause: start-up takes seconds, far longer on a loaded machine
            wait_until(ready, timeout_s=ready_s, what=what)
            yield FlashproProcess(base, process, output)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def flashpro_process(
    args: list[str],
    env: dict[str, str],
    ready_path: str = "/healthz",
    ready_s: float = STARTUP_DEADLINE_S,
) -> Iterator[FlashproProcess]:
    """Run `python -m router serve ...` as a real process (what the CLI and the container run)."""
    with router_process(["serve", *args], env, ready_path, ready_s) as running:
        yield running


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's own loop for every async test, and uvloop too for the upstream client's."""
    if item.path.name in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
