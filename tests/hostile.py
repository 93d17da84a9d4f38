"""A hostile fake upstream: a raw asyncio server on loopback that answers each request in the
wire mode named in its prompt (`[[wire:MODE]]`), and records what it saw: requests read, and
whether the client closed the connection before the answer ended.

Modes: `ok` (a JSON answer, kept alive), `stream` (SSE edge cases: multi-line data, bare CR,
comments, unknown fields, empty events), `trickle` (a head, then one byte every 0.2 s),
`drop` (reads the request, closes), `switch` (101), `partial` (an answer, then half a head in
the same write), `phantom` (an answer, then a whole unsolicited one while idle), `huge` (a
100 KB header), `many` (10,000 headers), `bomb` (a gzip body that inflates to 400 MB),
`queue` (200, then only `: keep-alive` comments), `blank` (200, then only blank lines),
`stall` (one event, then silence), `slow` (answers after 2 s), `echo` (a 400 quoting the
request's Authorization header).
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

_MODE = re.compile(rb"\[\[wire:([a-z]+)\]\]")


def chat_answer(text: str = "fine") -> bytes:
    body = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": "deepseek-v4-flash",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return orjson.dumps(body)


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def delta(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
# every edge of the event-stream format DeepSeek (or a proxy before it) may send
SSE_EDGES = [
    b": keep-alive\n\n",
    b"data: " + delta("one") + b"\n\n",
    b"data:\n\n",  # an empty event
    b"event: delta\nid: 1\nretry: 100\nfoo: bar\n",  # fields flashpro ignores
    b"data: " + delta("two")[:10] + b"\ndata: " + delta("two")[10:] + b"\n\n",  # multi-line
    b"data: " + delta("three") + b"\r\r",  # bare CR line endings
    b"data: " + delta("", "stop") + b"\r\n\r\n",
    b"data: [DONE]\n\n",
]


@functools.cache
def gzip_bomb() -> bytes:
    """About 400 KB of gzip that inflates to 400 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(400)) + packer.flush()


@dataclass
class Seen:
    """What the fake upstream saw."""

    accepted: int = 0  # connections
    requests: Counter[str] = field(default_factory=Counter)  # per mode
    headers: list[bytes] = field(default_factory=list)
    closed_early: Counter[str] = field(default_factory=Counter)  # client closed mid-answer


class HostileUpstream:
    """The server; `url` is its base URL. Use `running()` for one in a background thread."""

    def __init__(self) -> None:
        self.seen = Seen()
        self.port = 0
        self._server: asyncio.Server | None = None
        gzip_bomb()  # made once, before any request waits for it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line.lower().startswith(b"authorization:"):
                        self.seen.headers.append(line)
                body = await reader.readexactly(length)
                found = _MODE.search(body)
                mode = found.group(1).decode() if found else "ok"
                self.seen.requests[mode] += 1
                if not await self._answer(mode, reader, writer, head):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        """Answer one request; False: close the connection."""
        if mode == "ok":
            writer.write(answer(chat_answer()))
        elif mode == "stream":
            writer.write(SSE_HEAD)
            for piece in SSE_EDGES:
                writer.write(chunk(piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif mode == "drop":
            return False
        elif mode == "switch":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n")
            await writer.drain()
            return await _until_closed(reader)
        elif mode == "partial":
            writer.write(answer(chat_answer()) + b"HTTP/1.1 200 OK\r\ncontent-le")
        elif mode == "phantom":
            writer.write(answer(chat_answer()))
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(answer(chat_answer("not yours"), status=b"500 Phantom"))
        elif mode == "huge":
            writer.write(answer(chat_answer(), b"x-huge: " + b"a" * 100_000))
        elif mode == "many":
            writer.write(answer(chat_answer(), *(b"x-h%d: v" % i for i in range(10_000))))
        elif mode == "bomb":
            writer.write(answer(gzip_bomb(), b"content-encoding: gzip"))
        elif mode in ("queue", "blank", "trickle", "stall"):
            return await self._dribble(mode, reader, writer)
        elif mode == "slow":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            if not await _wait_or_close(reader, 2.0):
                self.seen.closed_early[mode] += 1
                return False
            writer.write(chunk(chat_answer()) + b"0\r\n\r\n")
        elif mode == "echo":
            quoted = b"Bad key: " + head.split(b"uthorization: ", 1)[-1].split(b"\r\n")[0]
            error = orjson.dumps({"error": {"message": quoted.decode(), "type": "invalid"}})
            writer.write(answer(error, status=b"400 Bad Request"))
        await writer.drain()
        return True

    async def _dribble(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Keep the answer open, sending nothing useful, until the client closes."""
        stream = mode in ("queue", "stall")
        writer.write(
            SSE_HEAD if stream else b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if mode == "stall":
            writer.write(chunk(b"data: " + delta("one") + b"\n\n"))
        piece = {"queue": b": keep-alive\n\n", "blank": b"\n", "trickle": b"{"}.get(mode)
        while True:
            if piece is not None:
                writer.write(chunk(piece))
            await writer.drain()
            if not await _wait_or_close(reader, 0.2 if mode == "trickle" else 0.05):
                self.seen.closed_early[mode] += 1
                return False


async def _wait_or_close(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait `seconds`; False if the client closed the connection meanwhile."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


async def _until_closed(reader: asyncio.StreamReader) -> bool:
    await reader.read()
    return False


@contextmanager
def running() -> Iterator[HostileUpstream]:
    """The fake upstream on its own event loop in a background thread (for tests that drive
    flashpro over HTTP from synchronous code)."""
    loop = asyncio.new_event_loop()
    server = HostileUpstream()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
