"""flashpro end to end against the hostile fake upstream (tests/hostile.py): a client that leaves
cancels the upstream call (the upstream sees its connection closed) and the request is charged
its prompt; DeepSeek's queue keep-alives reach a streaming client and do not hold off the
first-byte deadline, after which a fallback tier answers; every request is answered or fails
properly, none is lost."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from bench.soak import soak_policy
from router.app import build_deps
from router.simulator.server import RunningSimulator
from tests.conftest import UPSTREAM_KEY, flashpro_process, serve_app, settings_for, wait_until
from tests.hostile import HostileUpstream, running


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with running() as server:
        yield server


@pytest.fixture
def proxy(
    hostile: HostileUpstream, simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> Iterator[str]:
    """flashpro whose flash tier calls the hostile upstream (a queued request's first byte is
    due in 0.6 s) and whose other tiers call the simulator."""
    policy: dict[str, Any] = soak_policy(timeout_s=5.0)
    policy["tiers"]["flash"]["api_base"] = hostile.url
    policy["tiers"]["flash"]["timeouts"] = {"first_byte_ms": 600, "total_ms": 10_000}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), "utf-8")
    settings = settings_for(simulator, policy=path)
    with serve_app(settings, build_deps(settings)) as base:
        yield base


def body(mode: str, *, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "flash",
        "stream": stream,
        "messages": [{"role": "user", "content": f"Say hello. [[wire:{mode}]]"}],
    }


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(base + "/metrics", timeout=10).text.split("\n"):
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def leave_after(base: str, payload: dict[str, Any], seconds: float) -> bytes:
    """Send the request over a raw socket, read for `seconds`, then disconnect."""
    data = orjson.dumps(payload)
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        sock.settimeout(0.1)
        received = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue
    return received


@pytest.mark.parametrize(("mode", "stream"), [("slow", False), ("queue", True)])
def test_a_client_that_leaves_cancels_the_upstream_call_and_pays_its_prompt(
    proxy: str, hostile: HostileUpstream, mode: str, stream: bool
) -> None:
    before = hostile.seen.closed_early[mode]
    spent = metric(proxy, "flashpro_spend_usd_total")
    received = leave_after(proxy, body(mode, stream=stream), 0.4)
    wait_until(lambda: hostile.seen.closed_early[mode] == before + 1, 5, "the upstream close")
    if stream:  # the queue's keep-alives reached the client before it left
        assert received.startswith(b"HTTP/1.1 200") and b": keep-alive\n\n" in received
    else:
        assert received == b""
    records = {"error": "client_disconnected", "tier": "flash"}
    wait_until(lambda: metric(proxy, "flashpro_requests_total", **records) >= 1, 5, "the record")
    assert metric(proxy, "flashpro_spend_usd_total") > spent  # the prompt, at Flash prices


def test_a_queued_stream_gets_keep_alives_then_the_fallback_tier_answers(proxy: str) -> None:
    lines: list[str] = []
    with httpx.stream(
        "POST", proxy + "/v1/chat/completions", json=body("queue", stream=True), timeout=20
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-flashpro-tier"] == "flash"  # committed while queued
        lines = list(response.iter_lines())
    assert lines[0] == ": keep-alive"
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events and all("error" not in event for event in events)
    assert events[0]["model"] != "deepseek-v4-flash"  # the fallback tier's model
    assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert [line for line in lines if line][-1] == "data: [DONE]"


def test_a_queued_whole_answer_falls_back_after_its_first_byte_deadline(proxy: str) -> None:
    started = time.monotonic()
    response = httpx.post(proxy + "/v1/chat/completions", json=body("blank"), timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["x-flashpro-fallback"].startswith("flash->")
    assert "upstream_timeout" in response.headers["x-flashpro-fallback"]
    assert response.json()["choices"][0]["message"]["content"]
    assert time.monotonic() - started < 8  # not the ten minutes DeepSeek may queue for


def test_a_stream_cut_by_the_end_of_the_shutdown_grace_gets_an_error_event(
    simulator: RunningSimulator,
) -> None:
    env = {
        "DEEPSEEK_API_BASE": simulator.url,
        "DEEPSEEK_API_KEY": UPSTREAM_KEY,
        "FLASHPRO_SHUTDOWN_GRACE_S": "1",
        "FLASHPRO_POLICY_POLL_SECONDS": "0",
    }
    long = {
        "model": "flash",
        "stream": True,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "Tell a long story. [[sim:slow=200]]"}],
    }
    with flashpro_process([], env) as served:
        lines: list[str] = []
        with httpx.stream(
            "POST", served.base + "/v1/chat/completions", json=long, timeout=30
        ) as response:
            for line in response.iter_lines():
                if not lines:
                    served.process.send_signal(signal.SIGTERM)  # mid-stream
                lines.append(line)
        request_id = response.headers["x-flashpro-request-id"]
        assert served.process.wait(timeout=20) == 0
        output = served.output()
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert (error["code"], error["type"]) == ("shutdown", "server_error")
    logged = [
        orjson.loads(line) for line in output.split("\n") if request_id in line and "{" in line
    ]
    assert [(line["status"], line["error"]) for line in logged] == [(503, "shutdown")]
