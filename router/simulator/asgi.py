"""The simulator's raw ASGI I/O: read a request, send JSON or an error, pace a stream of
server-sent events at a model's speed. I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson
from starlette.types import Receive, Scope, Send

from router.simulator.text import SimError

_JSON: Final = (b"content-type", b"application/json")


async def paced_stream(
    events: Iterator[tuple[bytes, int]],
    ttft_s: float,
    per_token_s: float,
    disconnect_after: int | None,
    receive: Receive,
    send: Send,
    last: bytes = b"data: [DONE]\n\n",
) -> None:
    """Send SSE events at the model's pace, then `last` (chat streams end with `[DONE]`,
    Anthropic ones with their own `message_stop` event); stop early if the client goes away."""
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
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


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def request_headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
