"""The upstream HTTP/1.1 pool against raw loopback servers that answer exactly as scripted:
framing (length, chunked, to the close, gzip), keep-alive and its races, timeouts, the
connection limit, cancellation and flow control. Each runs on asyncio's loop and on uvloop
(tests/conftest.py)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from router.upstream.connections import Pool, ProtocolFailure
from router.upstream.transport import header_line, target

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FIELDS = header_line("content-type", "application/json")


@dataclass
class Server:
    """A raw TCP server on loopback; counts the connections it accepted."""

    port: int = 0
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        info = Server()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            info.accepted += 1
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        servers.append(server)
        info.port = server.sockets[0].getsockname()[1]
        return info

    yield start
    for server in servers:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: the head, then as many body bytes as Content-Length says."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def keep_answering(
    reply: Callable[[int], bytes], seen: list[bytes] | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A keep-alive server: answers every request on a connection with `reply(n)`."""
    count = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        while True:
            request = await read_request(reader)
            if seen is not None:
                seen.append(request)
            count += 1
            writer.write(reply(count))
            await writer.drain()

    return handler


async def test_keep_alive_reuses_one_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    seen: list[bytes] = []
    server = await serve(keep_answering(lambda n: answer(b'{"n": %d}' % n), seen))
    pool = Pool()
    to = target(server.url())
    bodies = [await (await pool.post(to, FIELDS, b'{"q": 1}', 5)).read() for _ in range(5)]
    assert bodies == [b'{"n": %d}' % n for n in range(1, 6)]
    assert server.accepted == 1
    assert pool.open_connections == 1
    first = seen[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-type: application/json\r\n" in first
    assert first.endswith(b'content-length: 8\r\n\r\n{"q": 1}')
    await pool.aclose()
    assert pool.open_connections == 0


async def test_concurrent_requests_open_a_connection_each_then_share_them(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server = await serve(keep_answering(lambda n: answer(b"ok")))
    pool = Pool()
    to = target(server.url())

    async def one() -> bytes:
        return await (await pool.post(to, FIELDS, b"{}", 5)).read()

    assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
    assert server.accepted == 6
    assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
    assert server.accepted == 6  # the second wave found six idle connections
    await pool.aclose()


async def test_the_limit_holds_requests_until_a_connection_is_free(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(answer(b"ok"))

    server = await serve(slow)
    pool = Pool(limit=2)
    to = target(server.url())
    most = 0

    async def one() -> bytes:
        nonlocal most
        response = await pool.post(to, FIELDS, b"{}", 5)
        most = max(most, pool.open_connections)
        return await response.read()

    assert await asyncio.gather(*(one() for _ in range(7))) == [b"ok"] * 7
    assert most == 2
    assert server.accepted == 2
    await pool.aclose()


async def test_chunked_and_close_delimited_and_gzip_bodies(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # kept alive: a second request on the same connection
        writer.write(answer(b"again"))
        await writer.drain()
        await reader.read()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    packed = gzip.compress(b'{"ok": true}')

    async def zipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(packed, b"content-encoding: gzip"))
        await writer.drain()
        await reader.read()

    pool = Pool()
    chunked_server = await serve(chunked)
    response = await pool.post(target(chunked_server.url()), FIELDS, b"{}", 5)
    assert [part async for part in response.chunks()] == [b"data: one\n\n", b"data: two\n\n"]
    again = await pool.post(target(chunked_server.url()), FIELDS, b"{}", 5)
    assert await again.read() == b"again"
    assert chunked_server.accepted == 1

    closing = await serve(until_close)
    assert await (await pool.post(target(closing.url()), FIELDS, b"{}", 5)).read() == b"all of it"
    assert pool.open_connections == 1  # the chunked server's; the closed one is gone

    zipped_server = await serve(zipped)
    response = await pool.post(target(zipped_server.url()), FIELDS, b"{}", 5)
    assert response.headers["content-encoding"] == "gzip"
    assert await response.read() == b'{"ok": true}'
    await pool.aclose()


async def test_a_connection_closed_while_idle_is_replaced_once(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    """The keep-alive race: the server closes an idle connection just as it is reused."""

    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"first"))  # says nothing of closing, then closes
        await writer.drain()
        await read_request(reader)  # the next request arrives; close without answering

    server = await serve(one_then_close)
    pool = Pool()
    to = target(server.url())
    assert await (await pool.post(to, FIELDS, b"{}", 5)).read() == b"first"
    assert await (await pool.post(to, FIELDS, b"{}", 5)).read() == b"first"
    assert server.accepted == 2
    await pool.aclose()


async def test_a_new_connection_closed_without_an_answer_fails(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    server = await serve(hang_up)
    pool = Pool()
    with pytest.raises(ConnectionError):
        await pool.post(target(server.url()), FIELDS, b"{}", 5)
    assert server.accepted == 1  # not retried: a new connection has no race to excuse it
    assert pool.open_connections == 0


async def test_a_body_cut_short_and_malformed_http_fail(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    pool = Pool()
    response = await pool.post(target((await serve(cut)).url()), FIELDS, b"{}", 5)
    with pytest.raises(ConnectionError):
        await response.read()
    with pytest.raises(ProtocolFailure, match="malformed"):
        await pool.post(target((await serve(garbage)).url()), FIELDS, b"{}", 5)
    assert pool.open_connections == 0


async def test_refused_connection_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError):
        await Pool().post(target("http://127.0.0.1:9/x"), FIELDS, b"{}", 5)


async def test_read_timeout_is_between_reads_not_for_the_whole_answer(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.3 s in all, never 0.2 s without a byte
            await asyncio.sleep(0.05)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(5)

    pool = Pool()
    response = await pool.post(target((await serve(trickle)).url()), FIELDS, b"{}", 0.2)
    assert await response.read() == b"x" * 6
    response = await pool.post(target((await serve(stall)).url()), FIELDS, b"{}", 0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await response.read()
    assert asyncio.get_running_loop().time() - started < 2
    assert pool.open_connections == 1  # the trickling server's; the stalled one was closed
    await pool.aclose()


async def test_no_answer_head_in_time_is_a_timeout(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    pool = Pool()
    with pytest.raises(TimeoutError):
        await pool.post(target((await serve(silent)).url()), FIELDS, b"{}", 0.1)
    assert pool.open_connections == 0


async def test_a_cancelled_request_closes_its_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.3)
            writer.write(answer(b"late"))
            await writer.drain()

    server = await serve(slow)
    pool = Pool()
    to = target(server.url())
    task = asyncio.ensure_future(pool.post(to, FIELDS, b"{}", 5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open_connections == 0  # its late answer must not reach the next request
    assert await (await pool.post(to, FIELDS, b"{}", 5)).read() == b"late"
    assert server.accepted == 2
    await pool.aclose()


async def test_an_abandoned_stream_closes_its_connection_and_a_slow_reader_is_flow_controlled(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    big = b"y" * (1024 * 1024)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(big))
            await writer.drain()

    server = await serve(large)
    pool = Pool()
    to = target(server.url())
    response = await pool.post(to, FIELDS, b"{}", 5)
    parts = response.chunks()
    first = await anext(parts)
    assert 0 < len(first) <= len(big)
    await parts.aclose()  # stop reading midway: the rest of the answer is not wanted
    assert pool.open_connections == 0

    response = await pool.post(to, FIELDS, b"{}", 5)
    received = bytearray()
    async for part in response.chunks():
        received += part
        await asyncio.sleep(0.001)  # slower than the socket: reading pauses and resumes
    assert bytes(received) == big
    assert pool.open_connections == 1
    await pool.aclose()


def test_targets_and_header_lines() -> None:
    plain = target("http://example.test/v1/chat/completions?x=1")
    assert plain.origin.port == 80 and plain.origin.proxy is None
    assert plain.head == b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: example.test\r\n"
    secure = target("https://api.deepseek.com/beta/chat/completions", "http://u:p%40ss@px:3128")
    assert secure.origin.port == 443 and secure.origin.proxy is not None
    assert secure.origin.proxy.authorization == b"Basic dTpwQHNz"  # u:p@ss
    assert secure.head.startswith(b"POST /beta/chat/completions HTTP/1.1\r\n")  # tunnelled
    forwarded = target("http://up.test:8080/x", "px:3128")
    assert forwarded.head == b"POST http://up.test:8080/x HTTP/1.1\r\nhost: up.test:8080\r\n"
    signed = target("http://up.test/x", "http://me:pw@px:3128")
    assert signed.head.endswith(b"proxy-authorization: Basic bWU6cHc=\r\n")  # me:pw
    with pytest.raises(ValueError):
        target("ftp://example.test/")
    with pytest.raises(ValueError):
        target("https://example.test/", "https://secure-proxy:443")
    with pytest.raises(ValueError, match="line break"):
        header_line("authorization", "Bearer sk-abc\n")
