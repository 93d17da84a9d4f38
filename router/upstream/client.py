"""HTTP to the upstream over aiohttp: pooled keep-alive connections per origin, TLS, HTTP
proxies, deadlines and caps. I/O; the only module that imports aiohttp.

What is configured, and why:
- Connections: at most `max_connections` open, `per_origin` to one scheme/host/port (a stream
  holds its connection for its whole length). A request that finds none free waits at most the
  call's `pool_wait_s`, then fails with a 503 and `Retry-After` (`UpstreamBusy`): a full pool is
  flashpro's own limit, not the upstream's health. Idle connections are kept `keepalive_s`,
  below the idle timeout of common servers (uvicorn 5 s), so a reused one is rarely closed by
  the server at the moment it is used.
- No replay of a request: aiohttp never resends a POST (RFC 9112 9.3.1), and a request the
  upstream read and then dropped is not sent twice by this layer; the retry policy
  (upstream/resilience.py) decides. Bytes that arrive on an idle pooled connection (an answer
  nobody asked for) close it, so such a connection is never reused.
- Deadlines (`Deadlines`): connect (TCP, TLS and the proxy's tunnel) within `connect_s`; a
  whole-call deadline `total_s` (aiohttp's `total`, which also bounds every read of the body);
  an idle gap `idle_s` between two reads (aiohttp's `sock_read`). The time-to-first-byte
  deadline is the transport's, as only it knows which bytes are the answer's.
- Caps: response header lines and fields of at most `max_header_bytes`, at most `max_headers`
  of them (a 502 beyond); a whole body of at most `max_body_bytes` once decompressed (aiohttp
  decompresses as it is read, so a gzip bomb fails at the cap instead of filling memory).
- TLS with the given context, else aiohttp's default (the system's trust store); proxies given
  per request (the transport reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY once per base URL:
  aiohttp's `trust_env` would look them up in a thread on every request).

Every aiohttp failure is translated here, once, into flashpro's errors (`_translate`).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from router.errors import FlashproError, UpstreamBusy, UpstreamError, UpstreamQueued
from router.upstream.base import Deadlines, transport_failure


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Process-wide limits of the upstream client (the policy holds the per-call deadlines)."""

    max_connections: int = 4096
    per_origin: int = 2048
    keepalive_s: float = 4.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 32 * 1024 * 1024


_TAIL = 16


def _ends_answer(received: bytes, body: bytes) -> bool:
    """Whether the last bytes received are the end of the answer just read (its body's last
    bytes, or a chunked body's end): else something followed it, such as the start of a
    head, and the connection is out of step with its requests."""
    if received.endswith(b"\r\n0\r\n\r\n") or received == b"0\r\n\r\n":
        return True
    return bool(body) and (body.endswith(received) or received.endswith(body[-_TAIL:]))


class _Handler(ResponseHandler):
    """aiohttp's connection protocol, closed when bytes arrive while it sits idle in the pool:
    such bytes would be read as the answer to the next request sent on it."""

    idle = False
    uses = 0
    head = False  # the next bytes start an answer's status line
    tail = b""  # the last bytes received

    def set_response_params(self, **kwargs: Any) -> None:
        self.idle = False
        self.head = True
        self.uses += 1
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if self.idle:
            if self.transport is not None:
                self.transport.close()
            return
        if data:  # aiohttp calls it with nothing to resume reading
            self.tail = data[-_TAIL:]
            if self.head:
                self.head = False
                if data[9:10] == b"1":  # "HTTP/1.1 1xx": aiohttp would pool a 101's connection
                    self.force_close()
        super().data_received(data)


class Response:
    """An answer whose head arrived. Read it with `read` or `next_part` to its end and the
    connection goes back to the pool; `close` drops it (an answer left unread, a failure)."""

    __slots__ = (
        "_done",
        "_last",
        "_protocol",
        "_raw",
        "_use",
        "headers",
        "max_body_bytes",
        "status",
    )

    def __init__(self, raw: aiohttp.ClientResponse, max_body_bytes: int) -> None:
        self._raw = raw
        self.status = raw.status
        self.headers: Mapping[str, str] = raw.headers
        self.max_body_bytes = max_body_bytes
        self._done = False
        self._last = b""  # the body's last bytes read
        # aiohttp's own reference: its `connection` is None already when the whole answer came
        # with its head (the connection went back to the pool, and nothing ran since)
        protocol = getattr(raw, "_protocol", None)
        self._protocol = protocol if isinstance(protocol, _Handler) else None
        self._use = self._protocol.uses if self._protocol is not None else 0

    async def read(self, on_first: Callable[[], None] | None = None) -> bytes:
        """The whole body, at most `max_body_bytes`; `on_first` is called when its first byte
        that is not whitespace comes (DeepSeek sends blank lines while a request waits in its
        queue)."""
        parts: list[bytes] = []
        size = 0
        try:
            while part := await self.next_part():
                size += len(part)
                if size > self.max_body_bytes:
                    raise UpstreamError(
                        f"The upstream's answer is over the {self.max_body_bytes}-byte limit."
                    )
                parts.append(part)
                if on_first is not None and part.strip():
                    on_first()
                    on_first = None
        finally:
            self.close()
        return b"".join(parts)

    async def next_part(self, until: float | None = None) -> bytes:
        """The next piece of the body as it arrives (decompressed), b"" at its end. With
        `until` (loop time) the piece must come by then (`first_byte_timeout`)."""
        content = self._raw.content
        try:
            if until is None:
                part = await content.readany()
            else:
                async with asyncio.timeout_at(until):
                    part = await content.readany()
        except TimeoutError as exc:
            self.close()
            if until is not None and asyncio.get_running_loop().time() >= until:
                raise first_byte_timeout() from exc
            raise transport_failure(timed_out=True) from exc
        except _FAILURES as exc:
            self.close()
            raise _translate(exc) from exc
        if part:
            self._last = part[-_TAIL:]
        else:
            self._finished()
        return part

    def _finished(self) -> None:
        """Read to its end: aiohttp has put the connection back in the pool; from now on
        it is idle, unless another request took it already."""
        self._done = True
        self._raw.release()
        protocol = self._protocol
        if protocol is not None and protocol.uses == self._use:
            protocol.idle = True
            stray = len(protocol) or not _ends_answer(protocol.tail, self._last)
            if stray or protocol.should_close:  # bytes after the answer: drop the connection
                protocol.close()

    def close(self) -> None:
        """Drop the connection unless the answer was read to its end (the upstream stops)."""
        if not self._done:
            self._done = True
            self._raw.close()


def first_byte_timeout() -> FlashproError:
    return UpstreamQueued(
        "The upstream sent no answer in time (the request may be queued upstream)."
    )


@dataclass
class HttpClient:
    """One pooled aiohttp session for every upstream call, made on first use (in the loop)."""

    limits: ClientLimits = field(default_factory=ClientLimits)
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    # made once: aiohttp would parse the URL and build the timeout again for every request
    _urls: dict[str, URL] = field(default_factory=dict, init=False, repr=False)
    _timeouts: dict[tuple[Deadlines, float, bool], aiohttp.ClientTimeout] = field(
        default_factory=dict, init=False, repr=False
    )

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            limits = self.limits
            connector = aiohttp.TCPConnector(
                limit=limits.max_connections,
                limit_per_host=limits.per_origin,
                keepalive_timeout=limits.keepalive_s,
                ttl_dns_cache=300,
                ssl=self.ssl_context if self.ssl_context is not None else True,
            )
            # aiohttp's own protocol, with the checks above (its one construction point)
            factory = functools.partial(_Handler, loop=connector._loop)
            connector._factory = cast("functools.partial[ResponseHandler]", factory)
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API sets no cookies worth keeping
                trust_env=False,
                auto_decompress=True,
                max_line_size=limits.max_header_bytes,
                max_field_size=limits.max_header_bytes,
                max_headers=limits.max_headers,
            )
        return session

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = URL(url)
        return parsed

    def _timeout(self, deadlines: Deadlines, idle_s: float, total: bool) -> aiohttp.ClientTimeout:
        """aiohttp's timers: `connect` bounds waiting for a free connection and connecting
        together, `sock_connect` connecting alone (so which fired tells a full pool from a slow
        connect), `sock_read` the idle gap, `total` (when asked) the whole call."""
        key = (deadlines, idle_s, total)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=deadlines.total_s if total else None,
                connect=deadlines.pool_wait_s + deadlines.connect_s,
                sock_connect=deadlines.connect_s,
                sock_read=idle_s,
                ceil_threshold=3600,  # fire when due, not rounded up to the second
            )
        return timeout

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        deadlines: Deadlines,
        idle_s: float,
        proxy: str | None = None,
        first_byte_at: float | None = None,
        total: bool = True,
    ) -> Response:
        """Send the request and wait for the answer's head (by `first_byte_at`, loop time, when
        given); `idle_s` bounds every wait for the next bytes, and `deadlines.total_s` the whole
        call unless `total` is False (the caller keeps that deadline itself). Raises flashpro's
        errors: `UpstreamBusy` when no connection was free in time, `UpstreamTimeout`,
        `UpstreamError`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            request = self._client().post(
                self._url(url),
                data=body,
                headers=headers,
                proxy=proxy,
                timeout=self._timeout(deadlines, idle_s, total),
                allow_redirects=False,
            )
            if first_byte_at is None:
                raw = await request
            else:
                async with asyncio.timeout_at(first_byte_at):
                    raw = await request
        except aiohttp.ConnectionTimeoutError as exc:
            waited = loop.time() - started
            if waited >= deadlines.pool_wait_s + deadlines.connect_s - _EARLY:
                raise UpstreamBusy(
                    "Every connection to the upstream is in use; try again shortly.",
                    headers={"Retry-After": "1"},
                ) from exc
            raise transport_failure(timed_out=True) from exc
        except TimeoutError as exc:
            if first_byte_at is not None and loop.time() >= first_byte_at:
                raise first_byte_timeout() from exc
            raise transport_failure(timed_out=True) from exc
        except _FAILURES as exc:
            raise _translate(exc) from exc
        return Response(raw, self.limits.max_body_bytes)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


_EARLY = 0.01  # timers fire a little early or late; a connect timeout ends far from the pool's


_FAILURES = (aiohttp.ClientError, OSError)


def _translate(exc: BaseException) -> FlashproError:
    """aiohttp's failure as flashpro's: timeouts are 504s; refused or dropped connections,
    TLS failures, malformed answers and broken caps 502s."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one
        return transport_failure(timed_out=True)
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer's head broke HTTP or a cap
        return UpstreamError(f"The upstream sent a malformed answer ({exc.message[:120]}).")
    return transport_failure(timed_out=False)
