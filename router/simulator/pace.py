"""Send the simulated DeepSeek's answers as a real server does: at the model's pace, after a
"queued" wait with keep-alive lines, with the faults a test asked for. Does I/O (ASGI sends)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from starlette.types import Receive, Send

from router.simulator.faults import FaultSpec, SimError

_JSON: Final = (b"content-type", b"application/json")


@dataclass(frozen=True)
class Queue:
    """A request "queued" for capacity: DeepSeek keeps the connection open and sends blank lines
    (non-stream) or `: keep-alive` comments (stream) until inference starts
    (api-docs.deepseek.com/quick_start/rate_limit)."""

    ms: float
    interval_s: float

    async def wait(self, send: Send, line: bytes) -> None:
        deadline = asyncio.get_running_loop().time() + self.ms / 1000
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            await send({"type": "http.response.body", "body": line, "more_body": True})
            await asyncio.sleep(min(self.interval_s, left))


async def send_queued(send: Send, queue: Queue) -> None:
    """The head of a non-streamed answer (no length: blank lines come first), then the lines."""
    await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
    await queue.wait(send, b"\n")


def with_empty(events: Iterator[tuple[bytes, int]], count: int) -> Iterator[tuple[bytes, int]]:
    """The events with `count` empty `data:` events after the first one."""
    for sent, event in enumerate(events):
        yield event
        if sent == 0:
            yield from ((b"data: \n\n", 0) for _ in range(count))


async def stream(
    events: Iterator[tuple[bytes, int]],
    ttft_s: float,
    per_token_s: float,
    fault: FaultSpec,
    queue: Queue,
    receive: Receive,
    send: Send,
    last: bytes = b"data: [DONE]\n\n",
) -> None:
    """Send SSE events at the model's pace, then `last` (chat streams end with `[DONE]`,
    Anthropic ones with their own `message_stop` event); stop early if the client goes away."""
    disconnect_after = fault.disconnect_after
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await queue.wait(send, b": keep-alive\n\n")
    client_gone = asyncio.ensure_future(receive())  # resolves on http.disconnect
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ttft_s
    due: list[bytes] = []  # events already due, sent in one write (speed 0 sends one write)
    try:
        for sent, (event, tokens) in enumerate(events):
            deadline += tokens * per_token_s
            if sent == disconnect_after or client_gone.done() or deadline > loop.time():
                if due:
                    body = b"".join(due)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    due.clear()
                if sent == disconnect_after or client_gone.done():
                    return  # returning mid-body makes uvicorn drop the connection
                await asyncio.sleep(deadline - loop.time())
            due.append(event)
        due.append(last)
        await send({"type": "http.response.body", "body": b"".join(due)})
    finally:
        client_gone.cancel()


async def send_json(send: Send, status: int, payload: object) -> None:
    await send_body(send, status, orjson.dumps(payload))


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    drop: bool = False,
) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send(
        {"type": "http.response.start", "status": status, "headers": [_JSON, length, *headers]}
    )
    if drop:  # half the body, then return: uvicorn closes the socket mid-response
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        return
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: SimError, envelope: object = None) -> None:
    """The error in the OpenAI envelope, or the `envelope` given (the Anthropic one)."""
    retry = error.retry_after_s
    headers = [] if retry is None else [(b"retry-after", f"{retry:g}".encode())]
    body = orjson.dumps(envelope if envelope is not None else error.envelope())
    await send_body(send, error.status, body, headers)
