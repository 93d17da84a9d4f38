"""HTTP/1.1 to the upstream: keep-alive connections per origin, TLS, HTTP proxies. I/O.

The direct transport (router/upstream/transport.py) sends one POST per chat request. aiohttp's client
spent about 180 µs of CPU on each against the simulator (its request and response objects,
timers, payload writers and stream readers); this client writes the request head in one piece
and parses the answer with httptools (llhttp, the parser uvicorn uses), which costs a fraction
of that. It does only what the transport needs:

- `POST` with a body in memory; answers with Content-Length, chunked, or ended by the close;
  `gzip` / `deflate` bodies are decoded (identity is asked for).
- A pool of keep-alive connections per origin (scheme, host, port and proxy): the most recently
  used first, at most `limit` open in all; an idle one is dropped after `keepalive_s`. A request
  that finds its reused connection closed before any answer byte (the server closed it while
  idle: the keep-alive race) is sent once more on a new connection.
- TLS with the given `ssl.SSLContext` (default: the system's trust store, as aiohttp and the
  standard library use), the server name checked.
- HTTP proxies: a CONNECT tunnel for `https` targets (TLS inside it); for `http` ones the
  request head already has the absolute form (targets are prepared by router/upstream/transport.py).
- A connect timeout and a read timeout that, as httpx's and aiohttp's `sock_read`, limits the
  time between two reads, not the whole answer (a stream may last minutes).

Failures are `ConnectionError` (refused, reset, closed early, a malformed answer, a proxy that
refuses), `ssl.SSLError` (a certificate not trusted) and `TimeoutError`; all are `OSError`s,
which the transport maps once.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httptools

_HIGH_WATER = 256 * 1024  # a stream's unread bytes before the socket stops being read


class ProtocolFailure(ConnectionError):
    """The peer broke HTTP/1.1, or closed the connection before the answer was whole."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: bytes | None  # the Proxy-Authorization value, from user:password@


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes; connections are pooled per origin."""

    scheme: str  # http | https
    host: str
    port: int
    proxy: Proxy | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A URL prepared once: its origin and the first lines of every request head to it."""

    origin: Origin
    head: bytes  # request line, Host (and Proxy-Authorization for a plain-http proxy)


class Response:
    """An answer whose head has arrived; read its body with `read` or `chunks`, then it goes
    back to the pool (or is closed) by itself. `release` closes one left unread."""

    __slots__ = ("_connection", "_decoder", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers
        coding = self.headers.get("content-encoding", "identity").strip().lower()
        self._decoder: Any = None
        if coding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(31 if "gzip" in coding else 15)
        elif coding != "identity":
            connection.close()
            raise ProtocolFailure(f"the upstream answered in an unknown encoding: {coding}")

    async def read(self) -> bytes:
        """The whole body."""
        connection = self._connection
        try:
            while not connection.complete:
                await connection.wait()
            data = connection.take()
        finally:
            self.release()
        return self._decode(data, final=True)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (several network reads may come as one piece)."""
        connection = self._connection
        connection.streaming = True
        try:
            while True:
                if connection.buffered:
                    data = self._decode(connection.take(), final=False)
                    if data:
                        yield data
                elif connection.complete:
                    if self._decoder is not None and (tail := self._decoder.flush()):
                        yield tail
                    return
                else:
                    await connection.wait()
        finally:
            self.release()

    def release(self) -> None:
        """Back to the pool if the answer was read whole and the server keeps the connection;
        closed otherwise (a stream abandoned midway stops the upstream's work)."""
        self._connection.finish()

    def _decode(self, data: bytes, *, final: bool) -> bytes:
        if self._decoder is None:
            return data
        try:
            out: bytes = self._decoder.decompress(data)
            return out + self._decoder.flush() if final else out
        except zlib.error as exc:
            raise ProtocolFailure(f"the upstream sent a body that does not decode: {exc}") from None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer in flight on it; httptools calls back."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.in_flight = False  # a request was sent and its answer is not read whole
        self.received = False  # any byte of the current answer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.streaming = False
        self.paused = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.tunnel: bytearray | None = None  # the proxy's CONNECT reply, read raw
        self.idle_since = 0.0
        self.read_timeout = 0.0
        self.last_read = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.tunnel is not None:
            self.tunnel += data
            if b"\r\n\r\n" in self.tunnel:
                self._wake()
            return
        if not self.in_flight:  # bytes nobody asked for (an idle server's goodbye)
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailure(f"the upstream sent malformed HTTP: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        if self.in_flight and self.head_done and not self.complete and self._ends_at_close():
            self.on_message_complete()  # the body ran to the close, as its head said it would
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if not self.complete or self.tunnel is not None:
            self._fail(exc or ProtocolFailure("the upstream closed the connection"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers = {}
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.streaming and self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:
            return  # the end of an interim answer
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._stop_timer()
        self._wake()

    # used by the pool and the response

    def send(self, head: bytes, body: bytes, read_timeout: float) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.received = self.head_done = self.complete = self.keep_alive = False
        self.streaming = False
        self.status = 0
        self.headers = {}
        self.read_timeout = read_timeout
        self.last_read = self.loop.time()
        if len(body) < 65536:
            self.transport.write(head + body)
        else:  # no copy of a large body
            self.transport.writelines((head, body))

    async def wait(self) -> None:
        """Until the next event on this connection (head, body, end) or its failure; the read
        timeout counts from now or from the last data, whichever is later."""
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ProtocolFailure("the upstream closed the connection")
        self.waiter = self.loop.create_future()
        self.last_read = self.loop.time()
        if self.timer is None and self.read_timeout > 0:
            self.timer = self.loop.call_at(self.last_read + self.read_timeout, self._expire)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        """The answer is done with: keep the connection if it is clean, else close it."""
        if not self.in_flight:
            return
        self.in_flight = False
        self._stop_timer()
        if self.complete and self.keep_alive and not self.closed and self.error is None:
            self.take()  # drops anything left unread, and reads again if a stream paused
            self.pool.idle(self)
        else:
            self.close()

    def close(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.close()

    def _forget(self) -> None:
        """Out of the pool's count (once), and no read timer left behind."""
        if not self.closed:
            self.closed = True
            self.pool.closed(self)
        self._stop_timer()

    async def open_tunnel(self, authority: str, authorization: bytes | None) -> None:
        """CONNECT through the proxy (under the caller's connect timeout); the reply is read
        raw, as httptools cannot be told that a 2xx to CONNECT has no body."""
        assert self.transport is not None
        lines = [f"CONNECT {authority} HTTP/1.1", f"host: {authority}"]
        if authorization:
            lines.append(f"proxy-authorization: {authorization.decode()}")
        self.tunnel = bytearray()
        self.read_timeout = 0.0
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.tunnel:
            await self.wait()
        head = bytes(self.tunnel).split(b"\r\n", 1)[0].split()
        self.tunnel = None
        self._stop_timer()
        status = head[1] if len(head) > 1 else b""
        if not status.startswith(b"2"):
            raise ProtocolFailure(
                f"the proxy refused the tunnel to {authority}: {b' '.join(head[1:]).decode()}"
            )

    def _ends_at_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.error)

    def _expire(self) -> None:
        """The read timeout: fires at the last read plus the timeout, and again if data came."""
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        due = self.last_read + self.read_timeout
        if self.loop.time() >= due:
            waiter.set_exception(TimeoutError("the upstream sent nothing in time"))
            self.close()
        else:
            self.timer = self.loop.call_at(due, self._expire)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Pool:
    """Keep-alive connections per origin; see the module's docstring."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        limit: int = 4096,
        keepalive_s: float = 30.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.limit = limit
        self.keepalive_s = keepalive_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def post(self, to: Target, fields: bytes, body: bytes, timeout_s: float) -> Response:
        """Send the request (`fields`: header lines after the target's own) and wait for the
        answer's head. `timeout_s` bounds the connect and each read."""
        head = b"%b%bcontent-length: %d\r\n\r\n" % (to.head, fields, len(body))
        while True:
            connection, reused = await self._connection(to.origin, timeout_s)
            try:
                connection.send(head, body, timeout_s)
                while not connection.head_done:
                    await connection.wait()
                return Response(connection)
            except ConnectionError:
                connection.close()
                if reused and not connection.received:
                    continue  # the server closed it while idle: once more on a new one
                raise
            except BaseException:
                connection.close()  # a timeout, or the caller went away: the answer is lost
                raise

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    def idle(self, connection: _Connection) -> None:
        connection.idle_since = connection.loop.time()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake_one()

    def closed(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if connection.loop.time() - connection.idle_since > self.keepalive_s:
                connection.close()
                continue
            return connection
        return None

    async def _connection(self, origin: Origin, timeout_s: float) -> tuple[_Connection, bool]:
        """An idle connection to `origin` (True: reused), else a new one once under the limit
        (an idle one to another origin is closed to make room)."""
        while True:
            if (connection := self._reuse(origin)) is not None:
                return connection, True
            if len(self._open) < self.limit or self._close_an_idle():
                return await self._connect(origin, timeout_s), False
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

    async def _connect(self, origin: Origin, timeout_s: float) -> _Connection:
        connection = _Connection(self, origin)
        self._open.add(connection)
        try:
            async with asyncio.timeout(timeout_s):
                await self._open_transport(connection, origin)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _open_transport(self, connection: _Connection, origin: Origin) -> None:
        loop = connection.loop
        proxy = origin.proxy
        tls = origin.scheme == "https"
        context = (self.ssl_context or _default_context()) if tls else None
        if proxy is None:
            await loop.create_connection(
                lambda: connection,
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if tls else None,
            )
            return
        await loop.create_connection(lambda: connection, proxy.host, proxy.port)
        if not tls:
            return  # plain http: absolute-form requests to the proxy
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        await connection.open_tunnel(f"{host}:{origin.port}", proxy.authorization)
        assert connection.transport is not None and context is not None
        tls_transport = await loop.start_tls(
            connection.transport, connection, context, server_hostname=origin.host
        )
        if tls_transport is None:
            raise ProtocolFailure("the TLS handshake through the proxy did not complete")
        connection.transport = tls_transport

    def _close_an_idle(self) -> bool:
        for idle in self._idle.values():
            while idle:
                connection = idle.pop(0)
                if not connection.closed:
                    connection.close()
                    return True
        return False

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system trust store, made once (loading it costs milliseconds)."""
    return ssl.create_default_context()
