"""A request's link to its client: the disconnect watch that cancels the work, and
the streamed answer's bytes (keep-alives, events, the ending). I/O.

- A client that disconnects at any point after sending its body (before the first byte,
  mid-stream, while a whole answer is produced) cancels the request's task, and with it the
  upstream call: the upstream connection is closed, so the upstream stops generating. The
  pipeline asks `gone` whether a cancellation was the client's (499) or the server's shutdown.
- While the upstream keeps a streamed request queued it sends `: keep-alive` comments; the
  first one commits the answer (status 200 and the routing headers of the tier first tried)
  and each is passed on as an SSE comment, so the client's own read timeout does not fire.
  A failure after that is an error event, as one mid-stream is.
- A stream cut by the server's shutdown (the end of the shutdown grace) ends with an error
  event (503, `shutdown`) and `[DONE]`, and is recorded as such, not as the client's doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson

from router.errors import FlashproError, ServiceUnavailable

log = logging.getLogger("flashpro")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")
_KEEP_ALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


def event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def named_event(data: Mapping[str, Any]) -> bytes:
    """An event named by its `type` (`event: <type>`), as the Messages and Responses APIs send."""
    return b"event: " + str(data.get("type")).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def shutdown_error() -> FlashproError:
    return ServiceUnavailable(
        "The server is shutting down; the stream was cut. Retry the request.", code="shutdown"
    )


async def sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events; an upstream failure mid-stream becomes an error event, then [DONE]."""
    try:
        async for data in chunks:
            yield event(data)
    except FlashproError as exc:
        yield event(exc.envelope())
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # a stream stopped early is recorded now, not when collected
    yield _DONE


class ClientLink:
    """The request's side of the connection: `watch` once the body is read, `close` at the
    end; `gone` says whether the client disconnected before the answer was whole."""

    __slots__ = ("_task", "_watcher", "done", "gone", "receive", "send", "started")

    def __init__(self, send: Send, receive: Receive) -> None:
        self.send = send
        self.receive = receive
        self.started = False  # a streamed answer's status and headers are sent
        self.done = False
        self.gone = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """From now on, a disconnect cancels the request's task."""
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.done and self._task is not None:
            self.gone = True
            self._task.cancel("the client disconnected")

    def left(self) -> bool:
        """After a CancelledError: True if the client's disconnect caused it (then the
        cancellation is spent: the task goes on to record the request)."""
        if not self.gone:
            return False
        if self._task is not None:
            self._task.uncancel()
        return True

    def close(self) -> None:
        self.done = True
        if self._watcher is not None:
            self._watcher.cancel()

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        if not self.started:
            self.started = True
            raw = [_SSE, _NO_CACHE, *raw_headers(headers)]
            await self.send({"type": "http.response.start", "status": 200, "headers": raw})

    def keep_alive(self, headers: Callable[[], Mapping[str, str]]) -> Callable[[], Awaitable[None]]:
        """What the pipeline calls on each upstream keep-alive before the first chunk."""

        async def waiting() -> None:
            await self.start_stream(headers())
            await self._body(_KEEP_ALIVE)

        return waiting

    async def stream(self, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        """Write the events as they come. A shutdown's cancellation ends the stream with an
        error event before it goes on; the client's own disconnect just stops it."""
        await self.start_stream(headers)
        try:
            async for chunk in events:
                await self._body(chunk)
        except asyncio.CancelledError:
            if not self.gone:
                await self.fail(shutdown_error())
            raise
        except Exception:  # the status is sent: end the body early, the client sees no [DONE]
            log.exception("stream %s: unexpected error", headers.get("x-flashpro-request-id"))
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._end()

    async def fail(self, error: FlashproError) -> None:
        """End a committed stream with an error event and [DONE] (best effort: the client may
        be gone)."""
        try:
            await self._body(event(error.envelope()) + _DONE)
            await self._end()
        except OSError:
            pass

    async def _body(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def _end(self) -> None:
        self.done = True
        await self.send({"type": "http.response.body", "body": b""})
