"""The HTTP/1.1 server edge: uvicorn's httptools protocol with bounded heads and read deadlines.
I/O (sockets), below the ASGI app.

uvicorn with httptools accepts request heads of any size and never times out a request that
arrives slowly, so one caller could hold memory and every descriptor. `BoundedHttpTools` adds,
before any ASGI work:

* a cap on the bytes of a request head (request line and headers, 32 KB by default): a larger
  head is answered 431 in OpenAI's error format and the connection is closed, counted while it
  arrives, so nothing beyond the cap plus one socket read is ever buffered;
* a head deadline (from the connection's start or a request's first byte to the end of its
  head) and a body deadline (from the end of the head to the end of the body): a request that
  misses one is answered 408 and dropped (slowloris);
* a write deadline: a client that reads nothing of its answer for `write_timeout_s` while
  flashpro has more to send (a slow reader) is dropped, and its request sees it gone;
* a cap on open connections: past it, a new connection gets a 503 and is closed at once;
* uvicorn's own "Invalid HTTP request" 400 rendered in OpenAI's error format.

The rest is uvicorn's: keep-alive (its `timeout_keep_alive` closes idle connections), flow
control, pipelining. A request that arrives in one socket read (nearly all of them) costs a few
attribute updates and no timer; a timer is armed only while a request is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from router.settings import Settings

Phase = Literal["head", "body"]
ANTHROPIC_PREFIX = b"/v1/messages"  # refusals there use Anthropic's error envelope
LINGER_S = 2.0  # after a refusal, how long the client's remaining bytes are read and dropped


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What the server accepts from a client before the app sees a request."""

    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    write_timeout_s: float = 60.0
    max_connections: int = 4096


def edge_limits(settings: Settings) -> EdgeLimits:
    return EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        max_connections=settings.max_connections,
    )


class HeadTooLarge(Exception):
    """Raised inside the parser's callback to stop it at once (httptools re-raises it wrapped)."""


def error_response(status: int, reason: str, message: str, code: str, anthropic: bool) -> bytes:
    """A whole HTTP/1.1 answer carrying OpenAI's error envelope (Anthropic's for a request to
    the Messages API), closing the connection."""
    if anthropic:
        kind = "overloaded_error" if status == 503 else "invalid_request_error"
        error: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    body = orjson.dumps(error)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `EdgeLimits` (see the module docstring).
    The limits come from the `FlashproConfig` that uvicorn hands every connection."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: EdgeLimits = getattr(config, "edges", None) or EdgeLimits()
        self.phase: Phase | None = "head"
        self.phase_ends = 0.0  # loop time by which the phase must be over
        self.head_bytes = 0  # bytes received while the current head is incomplete
        self.deadline: asyncio.TimerHandle | None = None
        self.lingering = False  # answered and half-closed: the client's bytes are dropped
        self.refusal: bytes | None = None  # due once the earlier requests are answered
        self.write_stall: asyncio.TimerHandle | None = None  # armed while writes are paused

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.phase = None  # no lingering here: the connection goes at once
            self.transport.write(
                error_response(
                    503,
                    "Service Unavailable",
                    "The server has too many open connections; retry shortly.",
                    "too_many_connections",
                    anthropic=False,  # nothing read yet
                )
            )
            self.transport.close()
            return
        self.phase_ends = self.loop.time() + self.limits.header_timeout_s
        self.deadline = self.loop.call_later(self.limits.header_timeout_s, self.expire)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.deadline, self.write_stall):
            if timer is not None:
                timer.cancel()
        self.deadline = self.write_stall = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_stall is None:
            self.write_stall = self.loop.call_later(self.limits.write_timeout_s, self.stalled)

    def resume_writing(self) -> None:
        if self.write_stall is not None:
            self.write_stall.cancel()
            self.write_stall = None
        super().resume_writing()

    def stalled(self) -> None:
        """The client has read nothing for `write_timeout_s`: drop it at once (`abort`, since
        `close` would wait for the unread answer to drain)."""
        self.write_stall = None
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.phase == "head":
            self.head_bytes += len(data)
        super().data_received(data)  # a head over the cap ends in `refuse` (HeadTooLarge)
        if self.transport.is_closing():
            return
        # a head that began in this read is counted from the next one (on_message_begin zeroed
        # it): this read may hold the end of an earlier body; one read is bounded anyway
        if self.phase == "head" and self.head_bytes > self.limits.max_header_bytes:
            self.head_too_large()
            return
        if self.phase is not None and self.deadline is None:
            self.deadline = self.loop.call_later(self.phase_ends - self.loop.time(), self.expire)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = "head"
        self.head_bytes = 0
        self.phase_ends = self.loop.time() + self.limits.header_timeout_s

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self.head_too_large()
            raise HeadTooLarge
        self.phase = "body"
        self.phase_ends = self.loop.time() + self.limits.body_timeout_s
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.phase = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        refusal = self.refusal
        if refusal is not None and not self.pipeline and self.cycle.response_complete:
            self.refusal = None
            self.refuse(refusal)

    def expire(self) -> None:
        """The deadline timer: re-armed while the phase still has time, else the request is
        answered 408 (unless its answer has begun) and the connection is closed."""
        self.deadline = None
        if self.lingering:
            self.transport.close()
            return
        if self.phase is None or self.transport.is_closing():
            return
        left = self.phase_ends - self.loop.time()
        if self.phase == "body" and self.flow.read_paused:  # our back-pressure, not the client
            left = max(left, self.limits.body_timeout_s)
        if left > 0:
            self.deadline = self.loop.call_later(left, self.expire)
            return
        what = "headers" if self.phase == "head" else "body"
        answered = self.cycle is not None and self.cycle.response_started and self.phase == "body"
        answer = error_response(
            408,
            "Request Timeout",
            f"The request {what} did not arrive in time.",
            "request_timeout",
            self.anthropic(),
        )
        self.refuse(b"" if answered else answer)

    def head_too_large(self) -> None:
        limit = self.limits.max_header_bytes
        self.refuse(
            error_response(
                431,
                "Request Header Fields Too Large",
                f"The request line and headers are over the {limit}-byte limit.",
                "request_header_fields_too_large",
                self.anthropic(),
            )
        )

    def send_400_response(self, msg: str) -> None:
        self.refuse(
            error_response(
                400,
                "Bad Request",
                "The request is not valid HTTP/1.1.",
                "invalid_http_request",
                self.anthropic(),
            )
        )

    def anthropic(self) -> bool:
        """Whether the request (as far as its target has arrived) is for the Messages API."""
        return getattr(self, "url", b"").startswith(ANTHROPIC_PREFIX)

    def refuse(self, answer: bytes) -> None:
        """Answer (unless `answer` is empty) and end the connection; a request the app is
        reading sees the client as gone. Only the first refusal of a connection is written.

        A lingering close, as nginx does: the answer is sent and the write side shut, then
        what the client still sends is read and dropped for up to `LINGER_S`, so the client
        reads the answer instead of a reset that would discard it."""
        if self.transport.is_closing() or self.lingering:
            return
        self.phase = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        if busy and (not cycle.more_body or self.pipeline):
            # an earlier request, read whole, is being answered: refuse after its answer
            if self.refusal is None:
                self.refusal = answer
            self.flow.pause_reading()
            return
        if busy and cycle.response_started:
            answer = b""  # half an answer is out: another cannot follow it
        if not answer or not self.transport.can_write_eof():
            if answer:
                self.transport.write(answer)
            self.transport.close()
            return
        self.transport.write(answer)
        self.transport.write_eof()
        self.lingering = True
        self.flow.resume_reading()
        self.deadline = self.loop.call_later(LINGER_S, self.expire)


class FlashproConfig(uvicorn.Config):
    """uvicorn's configuration with the edge limits, which every connection reads. Picklable,
    so `--workers N` hands it to each worker process."""

    def __init__(self, app: Any, *, edges: EdgeLimits | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("http", BoundedHttpTools)
        kwargs.setdefault("ws", "none")  # no WebSocket endpoints: an upgrade is plain HTTP
        super().__init__(app, **kwargs)
        self.edges = edges or EdgeLimits()


def serve(config: FlashproConfig) -> int:
    """Run the server until a signal stops it: 0 after a clean shutdown, 1 when the app's
    shutdown failed (the last decision-log lines could not be written, say). With several
    workers uvicorn's supervisor runs them, and a worker's failed shutdown is only logged."""
    _raise_descriptor_limit(config.edges)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    server = uvicorn.Server(config)
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal to this handler
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(exit_status(server)))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return exit_status(server)


def exit_status(server: uvicorn.Server) -> int:
    """1 when the app's lifespan failed (a shutdown that lost data), else 0."""
    lifespan = getattr(server, "lifespan", None)
    failed = getattr(lifespan, "shutdown_failed", False) or getattr(
        lifespan, "error_occurred", False
    )
    return 1 if failed else 0


def _raise_descriptor_limit(edges: EdgeLimits) -> None:
    """Room for every client connection the edge allows and one upstream connection each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * edges.max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, ceiling), hard))
