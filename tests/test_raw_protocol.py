"""The server edge over raw sockets (router/http/server.py): oversized heads, slow clients,
truncated and absurd bodies, pipelined garbage. Every case that is due an answer gets one, in
OpenAI's error format with the right status; nothing is lost; the server keeps serving."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from uvicorn.server import ServerState

from router.app import build_deps
from router.http.server import BoundedHttpTools, EdgeLimits, FlashproConfig
from router.simulator.server import RunningSimulator
from tests.conftest import serve_app, settings_for

LIMITS = EdgeLimits(max_header_bytes=32 * 1024, header_timeout_s=1.0, body_timeout_s=1.0)
HELLO = orjson.dumps({"model": "flash", "messages": [{"role": "user", "content": "hello"}]})
BIG = orjson.dumps({"model": "flash", "messages": [{"role": "user", "content": "x " * 100_000}]})


def post(body: bytes = HELLO, *headers: str, length: int | None = None) -> bytes:
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "host: flashpro",
        "content-type: application/json",
        f"content-length: {len(body) if length is None else length}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    """What came back on one connection: every answer's status and body, and how it ended."""

    answers: list[tuple[int, bytes]]
    closed: bool


def read_answers(sock: socket.socket, timeout_s: float) -> Reply:
    """Read HTTP/1.1 answers (content-length bodies) until EOF or `timeout_s` of silence."""
    sock.settimeout(timeout_s)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    answers: list[tuple[int, bytes]] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
        size = int(fields.get(b"content-length", b"0"))
        answers.append((status, rest[:size]))
        data = rest[size:]
    return Reply(answers, closed)


def exchange(
    port: int, payload: bytes, *, pause_s: float = 0.0, rest: bytes = b"", wait_s: float = 3.0
) -> Reply:
    """Send `payload`, optionally wait and send `rest`, then read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
            if pause_s:
                time.sleep(pause_s)
            if rest:
                sock.sendall(rest)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused mid-send; its answer is still readable
        return read_answers(sock, wait_s)


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[int], Reply]
    expect: tuple[frozenset[int], ...]  # per answer due on the connection, the statuses allowed


def any_of(*statuses: int) -> frozenset[int]:
    return frozenset(statuses)


def is_envelope(body: bytes) -> bool:
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return set(error) == {"message", "type", "param", "code"} and len(error["message"]) <= 512


CASES = [
    Case(
        "40 KB header",
        lambda p: exchange(p, post(HELLO, "x-junk: " + "a" * 40_000)),
        (any_of(431),),
    ),
    Case(
        "10 MB bearer",
        lambda p: exchange(p, post(HELLO, "authorization: Bearer " + "k" * 10_000_000)),
        (any_of(431),),
    ),
    Case(
        "3,000 small headers",
        lambda p: exchange(p, post(HELLO, *(f"x-h{i}: v" for i in range(3000)))),
        (any_of(431),),
    ),
    Case(
        "40 KB URL",
        lambda p: exchange(p, b"GET /" + b"u" * 40_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"),
        (any_of(431),),
    ),
    Case(
        "head never finished (slowloris)",
        lambda p: exchange(p, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: "),
        (any_of(408),),
    ),
    Case(
        "head sent one byte at a time, too slowly",
        lambda p: exchange(p, b"POST /v1/chat", pause_s=0.6, rest=b"/completions HTTP/1.1\r\n"),
        (any_of(408),),
    ),
    Case(
        "body never finished",
        lambda p: exchange(p, post(HELLO, length=len(HELLO) + 50)),
        (any_of(408),),
    ),
    Case(
        "absurd content-length",
        lambda p: exchange(p, post(b"{}", length=10**30)),
        (any_of(400, 413),),
    ),
    Case(
        "content-length over the body cap",
        lambda p: exchange(p, post(b"{", length=10**9)),
        (any_of(413),),
    ),
    Case(
        "negative content-length",
        lambda p: exchange(p, post(b"{}").replace(b"content-length: 2", b"content-length: -2")),
        (any_of(400),),
    ),
    Case(
        "content-length and chunked together",
        lambda p: exchange(p, post(HELLO, "transfer-encoding: chunked")),
        (any_of(400),),
    ),
    Case(
        "not HTTP at all",
        lambda p: exchange(p, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        (any_of(400),),
    ),
    Case("request line only junk", lambda p: exchange(p, b"HELLO WORLD\r\n\r\n"), (any_of(400),)),
    Case("NUL in a header", lambda p: exchange(p, post(HELLO, "x-bad: a\x00b")), (any_of(400),)),
    Case(
        "a valid request, then pipelined garbage",
        lambda p: exchange(p, post() + b"\x00\x01GARBAGE\r\n\r\n"),
        (any_of(200), any_of(400)),
    ),
    Case(
        "two pipelined requests",
        lambda p: exchange(p, post() + post(), wait_s=1.5),
        (any_of(200), any_of(200)),
    ),
    Case(
        "a 200 KB request and a pipelined one in one write",
        lambda p: exchange(p, post(BIG) + post(), wait_s=3),
        (any_of(200), any_of(200)),
    ),
    Case(
        "HTTP/1.0 without keep-alive",
        lambda p: exchange(p, post().replace(b"HTTP/1.1", b"HTTP/1.0")),
        (any_of(200),),
    ),
    Case(
        "chunked body with an absurd chunk size",
        lambda p: exchange(
            p,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"fffffffffffffffffff\r\n{}",
        ),
        (any_of(400, 413),),
    ),
]


@pytest.fixture(scope="module")
def port(simulator: RunningSimulator, upstream_env: None) -> Iterator[int]:
    settings = settings_for(simulator, max_body_bytes=256 * 1024)
    with serve_app(settings, build_deps(settings), LIMITS) as base:
        yield int(base.rsplit(":", 1)[1])


def test_hostile_raw_requests_get_proper_answers_and_none_is_lost(port: int) -> None:
    sent = answered = proper = lost = 0
    problems: list[str] = []
    for case in CASES:
        reply = case.send(port)
        statuses = tuple(status for status, _ in reply.answers)
        sent += 1
        answered += bool(reply.answers)
        if len(statuses) < len(case.expect):
            lost += 1
        errors_ok = all(is_envelope(body) for status, body in reply.answers if status >= 400)
        matches = len(statuses) == len(case.expect) and all(
            status in allowed for status, allowed in zip(statuses, case.expect, strict=True)
        )
        if matches and errors_ok:
            proper += 1
        else:
            problems.append(f"{case.name}: got {statuses} {reply.answers[-1:]!r:.300}")
    print(f"raw protocol: sent {sent}, answered {answered}, proper {proper}, lost {lost}")
    assert lost == 0 and proper == sent, "\n".join(problems)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=HELLO, timeout=10)
    assert chat.status_code == 200


def test_slow_connections_are_dropped_and_do_not_block_others(port: int) -> None:
    held = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        held.append(sock)
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=HELLO, timeout=10)
    assert answer.status_code == 200
    time.sleep(LIMITS.header_timeout_s + 1.0)
    dropped = 0
    for sock in held:
        reply = read_answers(sock, 0.5)
        dropped += reply.closed and [s for s, _ in reply.answers] == [408]
        sock.close()
    assert dropped == len(held)


def test_an_idle_connection_that_never_sends_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reply = read_answers(sock, LIMITS.header_timeout_s + 2)
    assert reply.closed and [s for s, _ in reply.answers] == [408]


def test_a_header_just_under_the_cap_is_served(port: int) -> None:
    filler = "a" * (LIMITS.max_header_bytes - 400)
    reply = exchange(port, post(HELLO, "x-filler: " + filler), wait_s=5)
    assert [s for s, _ in reply.answers] == [200]


def test_connections_past_the_cap_get_503(simulator: RunningSimulator, upstream_env: None) -> None:
    settings = settings_for(simulator)
    limits = EdgeLimits(max_connections=4, header_timeout_s=5)
    with serve_app(settings, build_deps(settings), limits) as base:
        port = int(base.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        time.sleep(0.2)
        reply = exchange(port, post(), wait_s=2)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert [s for s, _ in reply.answers] == [503] and is_envelope(reply.answers[0][1])
        assert httpx.get(base + "/healthz").status_code == 200


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().split("\n"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_fifty_ten_megabyte_bearers_are_refused_without_holding_memory(port: int) -> None:
    huge = post(HELLO, "authorization: Bearer " + "k" * 10_000_000)
    exchange(port, huge)  # warm-up: buffers the first refusal needs
    before = rss_mb()  # the server runs in this process
    statuses = [s for _ in range(50) for s, _ in exchange(port, huge).answers]
    grown = rss_mb() - before
    assert statuses == [431] * 50
    assert grown < 50, f"RSS grew {grown:.0f} MB"


class StalledTransport(asyncio.Transport):
    """A peer that never reads: records how the server ends the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass


async def test_a_client_that_reads_nothing_of_its_answer_is_dropped() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(10)  # a long answer, blocked on the client's reading

    limits = EdgeLimits(write_timeout_s=0.05)
    config = FlashproConfig(app, edges=limits, log_level="warning")
    config.load()
    protocol = BoundedHttpTools(config, ServerState(), {}, asyncio.get_running_loop())
    stalled, reading = StalledTransport(), StalledTransport()
    protocol.connection_made(stalled)
    protocol.pause_writing()  # the transport's buffer is full: the client stopped reading
    await asyncio.sleep(0.2)
    assert stalled.aborted
    other = BoundedHttpTools(config, ServerState(), {}, asyncio.get_running_loop())
    other.connection_made(reading)
    other.pause_writing()
    other.resume_writing()  # it read in time
    await asyncio.sleep(0.2)
    assert not reading.aborted
    for each in (protocol, other):
        each.connection_lost(None)


def test_refusals_on_the_messages_api_use_anthropic_errors(port: int) -> None:
    big = "x-junk: " + "a" * 40_000
    head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n{big}\r\n\r\n{{}}"
    reply = exchange(port, head.encode())
    slow = exchange(port, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-slow: ")
    for answer, status in ((reply, 431), (slow, 408)):
        ((got, body),) = answer.answers
        error = orjson.loads(body)
        assert got == status and error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
