"""The direct transport end to end over real TLS and through HTTP proxies.

Everything runs on loopback: the simulator serves HTTPS with a certificate from a test CA
(trustme), and the proxies below are real servers speaking HTTP/1.1: CONNECT tunnels for https,
absolute-form forwarding for plain http. The tests use only `DirectUpstream`'s public methods, so
they hold whatever HTTP client the transport is built on.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import pytest
import trustme

from router.errors import (
    FlashproError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from router.simulator.server import (
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)
from router.upstream.assemble import StreamAssembler
from router.upstream.base import Chunk, Completion, UpstreamCall
from router.upstream.transport import DirectUpstream
from tests.conftest import UPSTREAM_KEY, free_port

PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
CREDENTIALS = "flashpro:proxy-secret"
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def serve_tls(ca: trustme.CA, directory: Path, *names: str) -> RunningSimulator:
    """A zero-latency simulator over HTTPS with a certificate from `ca` for `names`."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = ca.issue_cert(*names)
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    for pem in certificate.cert_chain_pems:
        pem.write_to_path(str(certfile), append=True)
    certificate.private_key_pem.write_to_path(str(keyfile))
    config = SimulatorConfig(profiles=default_profiles(), speed=0, api_key=UPSTREAM_KEY)
    return start_in_thread(config, ssl_certfile=certfile, ssl_keyfile=keyfile)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_simulator(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSimulator]:
    running = serve_tls(ca, tmp_path_factory.mktemp("tls"), "127.0.0.1", "localhost")
    yield running
    running.stop()


@pytest.fixture
def tls_sim(tls_simulator: RunningSimulator) -> RunningSimulator:
    tls_simulator.clear()
    return tls_simulator


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA (and nothing else)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ca.configure_trust(context)
    return context


@pytest.fixture
async def upstream(trusting: ssl.SSLContext) -> AsyncIterator[DirectUpstream]:
    """A fresh transport per test: it reads the proxy variables once per base URL."""
    direct = DirectUpstream(secrets=(UPSTREAM_KEY,), ssl_context=trusting)
    yield direct
    await direct.aclose()


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without proxies, whatever the machine running them has set."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def set_proxy(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Both spellings: urllib prefers the lower-case one when both are set."""
    monkeypatch.setenv(name, value)
    monkeypatch.setenv(name.upper(), value)


def chat(
    base: str,
    text: str = "Say something.",
    *,
    api_key: str = UPSTREAM_KEY,
    timeout_s: float = 5.0,
) -> UpstreamCall:
    return UpstreamCall(
        model="deepseek/deepseek-v4-flash",
        messages=[{"role": "user", "content": text}],
        params={},
        thinking="disabled",
        reasoning_effort=None,
        api_base=base,
        api_key=api_key,
        timeout_s=timeout_s,
    )


async def streamed(upstream: DirectUpstream, call: UpstreamCall) -> list[Chunk]:
    return [chunk async for chunk in await upstream.stream(call)]


def answer_text(completion: Completion) -> str:
    content = completion.body["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def assert_whole_stream(chunks: list[Chunk]) -> None:
    """Content, a finish reason, and exactly one usage report, on the last chunk."""
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk.data)
    assert assembler.finished
    assert assembler.body()["choices"][0]["message"]["content"]
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens > 0
    assert chunks[-1].usage is usages[0]


async def failure(upstream: DirectUpstream, call: UpstreamCall, *, stream: bool) -> FlashproError:
    with pytest.raises(FlashproError) as caught:
        if stream:
            await streamed(upstream, call)
        else:
            await upstream.complete(call)
    return caught.value


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    other_reader: asyncio.StreamReader,
    other_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until one side closes, then close both."""

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    await asyncio.gather(pump(reader, other_writer), pump(other_reader, writer))


@dataclass
class LoopServer:
    """A loopback TCP server whose connection handlers end with it."""

    accepted: int = 0  # TCP connections from the client
    _server: asyncio.Server | None = field(default=None, init=False)
    _clients: dict[asyncio.StreamWriter, asyncio.Task[None]] = field(
        default_factory=dict, init=False
    )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Hang up on every client; each handler then sees its end of file and returns."""
        assert self._server is not None
        self._server.close()
        for writer in self._clients:
            writer.close()
        await asyncio.gather(*self._clients.values())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._clients[writer] = task
        try:
            await self.handle(reader, writer)
        finally:
            writer.close()
            del self._clients[writer]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class Relay(LoopServer):
    """Passes TCP connections through to `target` unchanged: TLS ends at the simulator, and
    `accepted` counts the connections the client opened."""

    target: tuple[str, int] = field(kw_only=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection(*self.target)
        await _splice(reader, writer, target_reader, target_writer)


def relay_to(server: RunningSimulator) -> Relay:
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    assert host is not None and port is not None
    return Relay(target=(host, port))


@dataclass
class Proxy(LoopServer):
    """An HTTP proxy: CONNECT opens a tunnel, an absolute-form request is forwarded (one per
    connection), anything else is a 405. `seen` is every request line, in order."""

    connect_status: int | None = 200  # another status refuses every CONNECT; None hangs up
    credentials: str | None = None  # "user:password" required as Proxy-Authorization (Basic)
    seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        line, *lines = head.decode("latin-1").split("\r\n")
        self.seen.append(line)
        method, target, version = line.split(" ", 2)
        lines = [h for h in lines if h]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        if self.credentials is not None and headers.get("proxy-authorization") != self._basic():
            await _answer(writer, 407, 'Proxy-Authenticate: Basic realm="test"\r\n')
        elif method == "CONNECT":
            await self._tunnel(target, reader, writer)
        elif target.startswith("http://"):
            await self._forward(method, target, version, lines, reader, writer)
        else:
            await _answer(writer, 405)

    def _basic(self) -> str:
        assert self.credentials is not None
        return "Basic " + base64.b64encode(self.credentials.encode()).decode()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.connect_status is None:
            return
        if self.connect_status != 200:
            await _answer(writer, self.connect_status)
            return
        host, _, port = target.rpartition(":")
        try:
            target_reader, target_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await _answer(writer, 502)
            return
        writer.write(CONNECT_ESTABLISHED)
        await _splice(reader, writer, target_reader, target_writer)

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        lines: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Relay to the origin in origin form, closing after the answer: the origin then says
        `connection: close` and the client does not reuse this connection."""
        url = urlsplit(target)
        try:
            target_reader, target_writer = await asyncio.open_connection(url.hostname, url.port)
        except OSError:
            await _answer(writer, 502)
            return
        kept = [h for h in lines if not h.lower().startswith(("proxy-", "connection:"))]
        path = url.path + (f"?{url.query}" if url.query else "")
        head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        target_writer.write(head.encode("latin-1"))
        await _splice(reader, writer, target_reader, target_writer)


async def _answer(writer: asyncio.StreamWriter, status: int, headers: str = "") -> None:
    writer.write(f"HTTP/1.1 {status} Refused\r\n{headers}Content-Length: 0\r\n\r\n".encode())
    await writer.drain()


async def test_completion_over_tls(tls_sim: RunningSimulator, upstream: DirectUpstream) -> None:
    assert tls_sim.url.startswith("https://127.0.0.1:")
    completion = await upstream.complete(chat(tls_sim.url, "What is the capital of France?"))
    assert answer_text(completion)
    assert completion.usage.completion_tokens > 0
    (received,) = tls_sim.requests()
    assert received.path == "/chat/completions"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received.body is not None and received.body["messages"][0]["content"].startswith("What")


async def test_stream_over_tls_is_read_to_the_end(
    tls_sim: RunningSimulator, upstream: DirectUpstream
) -> None:
    chunks = await streamed(upstream, chat(tls_sim.url, "Write a haiku about the sea."))
    assert len(chunks) > 2
    assert_whole_stream(chunks)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("text", "api_key", "kind", "headers"),
    [
        pytest.param(
            "x [[sim:status=429]][[sim:retry_after=3]]",
            UPSTREAM_KEY,
            UpstreamRateLimited,
            {"Retry-After": "3"},
            id="429",
        ),
        pytest.param("hi", "sk-wrong-key-0000000000", UpstreamAuthFailed, {}, id="wrong key"),
        pytest.param("x [[sim:status=503]]", UPSTREAM_KEY, UpstreamOverloaded, {}, id="503"),
    ],
)
async def test_error_statuses_over_tls_are_mapped(
    tls_sim: RunningSimulator,
    upstream: DirectUpstream,
    stream: bool,
    text: str,
    api_key: str,
    kind: type[FlashproError],
    headers: dict[str, str],
) -> None:
    error = await failure(upstream, chat(tls_sim.url, text, api_key=api_key), stream=stream)
    assert type(error) is kind
    assert error.headers == headers
    assert "sk-wrong-key" not in error.message
    assert len(tls_sim.requests()) == 1


async def test_sequential_requests_share_one_connection(
    tls_sim: RunningSimulator, upstream: DirectUpstream
) -> None:
    """Answers, streams and error answers all leave the connection reusable."""
    async with relay_to(tls_sim) as relay:
        base = f"https://127.0.0.1:{relay.port}"
        for round_ in range(4):
            assert answer_text(await upstream.complete(chat(base, f"Question {round_}?")))
            assert_whole_stream(await streamed(upstream, chat(base, f"Stream {round_}.")))
            limited = chat(base, "x [[sim:status=429]]")
            assert isinstance(await failure(upstream, limited, stream=False), UpstreamRateLimited)
        assert relay.accepted == 1
    assert len(tls_sim.requests()) == 12


async def test_concurrent_requests_are_all_answered_and_pooled(
    tls_sim: RunningSimulator, upstream: DirectUpstream
) -> None:
    async with relay_to(tls_sim) as relay:
        base = f"https://127.0.0.1:{relay.port}"

        async def one(i: int) -> None:
            if i % 2:
                assert_whole_stream(await streamed(upstream, chat(base, f"Request {i}.")))
            else:
                assert answer_text(await upstream.complete(chat(base, f"Request {i}.")))

        await asyncio.gather(*(one(i) for i in range(20)))
        first_wave = relay.accepted
        await asyncio.gather(*(one(i) for i in range(20)))
        assert 1 <= first_wave <= 20
        assert relay.accepted == first_wave  # the second wave found every connection pooled
    prompts = [r.body["messages"][0]["content"] for r in tls_sim.requests() if r.body]
    assert sorted(prompts) == sorted([f"Request {i}." for i in range(20)] * 2)


@pytest.fixture(scope="module")
def misnamed_simulator(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSimulator]:
    """Signed by the trusted CA, but for another host name than the one dialled."""
    running = serve_tls(ca, tmp_path_factory.mktemp("misnamed"), "api.flashpro.invalid")
    yield running
    running.stop()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("trust", ["system store", "another CA", "wrong host name"])
async def test_an_untrusted_certificate_is_refused(
    tls_sim: RunningSimulator,
    misnamed_simulator: RunningSimulator,
    trusting: ssl.SSLContext,
    trust: str,
    stream: bool,
) -> None:
    server = misnamed_simulator if trust == "wrong host name" else tls_sim
    context: ssl.SSLContext | None = trusting
    if trust == "system store":
        context = None
    elif trust == "another CA":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        trustme.CA().configure_trust(context)
    upstream = DirectUpstream(ssl_context=context)
    misnamed_simulator.clear()
    try:
        error = await failure(upstream, chat(server.url), stream=stream)
    finally:
        await upstream.aclose()
    assert type(error) is UpstreamError
    assert (error.status, error.code) == (502, "upstream_error")
    assert server.requests() == []


async def test_https_goes_through_a_connect_tunnel(
    tls_sim: RunningSimulator, upstream: DirectUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        set_proxy(monkeypatch, "https_proxy", proxy.url)
        assert answer_text(await upstream.complete(chat(tls_sim.url)))
        assert_whole_stream(await streamed(upstream, chat(tls_sim.url, "Count to five.")))
        assert answer_text(await upstream.complete(chat(tls_sim.url, "Again?")))
    target = tls_sim.url.removeprefix("https://")
    assert proxy.seen == [f"CONNECT {target} HTTP/1.1"]  # one tunnel, reused
    assert len(tls_sim.requests()) == 3


async def test_proxy_credentials_in_the_url_are_sent(
    tls_sim: RunningSimulator, upstream: DirectUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy(credentials=CREDENTIALS) as proxy:
        set_proxy(monkeypatch, "https_proxy", proxy.url.replace("://", f"://{CREDENTIALS}@"))
        assert answer_text(await upstream.complete(chat(tls_sim.url)))
    assert proxy.seen == [f"CONNECT {tls_sim.url.removeprefix('https://')} HTTP/1.1"]
    assert "proxy-authorization" not in tls_sim.requests()[0].headers


async def test_no_proxy_bypasses_the_proxy(
    tls_sim: RunningSimulator, upstream: DirectUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy() as proxy:
        set_proxy(monkeypatch, "https_proxy", proxy.url)
        set_proxy(monkeypatch, "no_proxy", "localhost,127.0.0.1")
        assert answer_text(await upstream.complete(chat(tls_sim.url)))
        assert_whole_stream(await streamed(upstream, chat(tls_sim.url)))
    assert (proxy.accepted, proxy.seen) == (0, [])
    assert len(tls_sim.requests()) == 2


async def test_plain_http_is_forwarded_in_absolute_form(
    sim: RunningSimulator, upstream: DirectUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy(credentials=CREDENTIALS) as proxy:
        set_proxy(monkeypatch, "http_proxy", proxy.url.replace("://", f"://{CREDENTIALS}@"))
        assert answer_text(await upstream.complete(chat(sim.url)))
        assert_whole_stream(await streamed(upstream, chat(sim.url)))
    assert proxy.seen == [f"POST {sim.url}/chat/completions HTTP/1.1"] * 2
    assert [r.headers["authorization"] for r in sim.requests()] == [f"Bearer {UPSTREAM_KEY}"] * 2
    assert all("proxy-authorization" not in r.headers for r in sim.requests())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("refusal", ["403", "502", "hang up", "wrong credentials", "proxy down"])
async def test_a_refusing_proxy_is_a_transport_failure(
    tls_sim: RunningSimulator,
    upstream: DirectUpstream,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
    stream: bool,
) -> None:
    status = int(refusal) if refusal.isdigit() else None if refusal == "hang up" else 200
    credentials = CREDENTIALS if refusal == "wrong credentials" else None
    async with Proxy(connect_status=status, credentials=credentials) as proxy:
        url = proxy.url
        if refusal == "wrong credentials":
            url = url.replace("://", "://flashpro:wrong@")
        elif refusal == "proxy down":
            url = f"http://127.0.0.1:{free_port()}"
        set_proxy(monkeypatch, "https_proxy", url)
        started = time.monotonic()
        error = await failure(upstream, chat(tls_sim.url, timeout_s=5.0), stream=stream)
    assert type(error) is UpstreamError
    assert time.monotonic() - started < 2.0
    assert len(proxy.seen) == (0 if refusal == "proxy down" else 1)
    assert tls_sim.requests() == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("via_proxy", [False, True])
async def test_a_slow_answer_times_out(
    tls_sim: RunningSimulator,
    upstream: DirectUpstream,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
    via_proxy: bool,
) -> None:
    async with Proxy() as proxy:
        if via_proxy:
            set_proxy(monkeypatch, "https_proxy", proxy.url)
        slow = chat(tls_sim.url, "x [[sim:delay_ms=600]]", timeout_s=0.2)
        started = time.monotonic()
        error = await failure(upstream, slow, stream=stream)
        elapsed = time.monotonic() - started
    assert type(error) is UpstreamTimeout
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert 0.2 <= elapsed < 0.6  # the answer would have come after 0.6 s
    assert len(proxy.seen) == int(via_proxy)
