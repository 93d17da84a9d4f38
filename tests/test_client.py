"""The direct transport over the upstream HTTP client against a hostile fake upstream
(tests/hostile.py) in every wire mode: each request must be answered or fail with the proper
error in time, and none may be lost (hang, crash, leak memory, or be sent twice). Each test
reports sent / answered / proper error / lost. Runs on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from router.errors import (
    FlashproError,
    UpstreamBusy,
    UpstreamError,
    UpstreamQueued,
    UpstreamRejected,
    UpstreamTimeout,
)
from router.upstream.base import Chunk, Deadlines, UpstreamCall
from router.upstream.client import ClientLimits
from router.upstream.transport import DirectUpstream
from tests.hostile import HostileUpstream

QUICK = Deadlines(connect_s=2.0, pool_wait_s=0.3, first_byte_s=2.0, total_s=2.5)


@dataclass
class Tally:
    """sent / answered / proper error / lost, for one test's requests."""

    counts: Counter[str] = field(default_factory=Counter)

    async def run(
        self, work: Awaitable[object], proper: type[FlashproError] | None, within_s: float
    ) -> object:
        """`work` must end within `within_s`: answered when `proper` is None, else failed
        with that error; anything else is lost."""
        self.counts["sent"] += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(within_s):
                result = await work
        except FlashproError as exc:
            if proper is not None and isinstance(exc, proper):
                self.counts["proper error"] += 1
                return exc
            self.counts["lost"] += 1
            return exc
        except TimeoutError:
            self.counts["lost"] += 1
            return None
        assert time.monotonic() - started < within_s
        self.counts["answered" if proper is None else "lost"] += 1
        return result

    def report(self) -> dict[str, int]:
        out = {k: self.counts[k] for k in ("sent", "answered", "proper error", "lost")}
        print("hostile upstream:", out)
        return out


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    server = HostileUpstream()
    await server.start()
    yield server
    server.close()


@pytest.fixture
async def direct() -> AsyncIterator[DirectUpstream]:
    upstream = DirectUpstream(secrets=("sk-configured-0000000000",))
    yield upstream
    await upstream.aclose()


def call(
    base: str,
    mode: str,
    *,
    deadlines: Deadlines = QUICK,
    idle_s: float = 5.0,
    api_key: str = "sk-configured-0000000000",
) -> UpstreamCall:
    return UpstreamCall(
        model="deepseek/deepseek-v4-flash",
        messages=[{"role": "user", "content": f"hello [[wire:{mode}]]"}],
        params={},
        thinking="disabled",
        reasoning_effort=None,
        api_base=base,
        api_key=api_key,
        timeout_s=idle_s,
        deadlines=deadlines,
    )


async def streamed(upstream: DirectUpstream, c: UpstreamCall) -> list[Chunk]:
    return [chunk async for chunk in await upstream.stream(c)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for chunk in chunks
        for choice in chunk.data.get("choices", [])
    )


async def test_sse_edge_cases_are_read_per_the_spec(
    hostile: HostileUpstream, direct: DirectUpstream
) -> None:
    tally = Tally()
    chunks = await tally.run(streamed(direct, call(hostile.url, "stream")), None, 5)
    assert isinstance(chunks, list)
    assert text_of([c for c in chunks if not c.keep_alive]) == "onetwothree"
    assert chunks[0].keep_alive  # the comment before the first event, handed on
    assert sum(c.keep_alive for c in chunks) == 1
    # the connection went back to the pool and serves the next request
    assert await tally.run(direct.complete(call(hostile.url, "ok")), None, 5)
    assert hostile.seen.accepted == 1
    assert tally.report()["lost"] == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_trickle_is_cut_by_the_whole_call_deadline(
    hostile: HostileUpstream, direct: DirectUpstream, stream: bool
) -> None:
    tally = Tally()
    slow = call(hostile.url, "trickle" if not stream else "stall", deadlines=QUICK)
    work = streamed(direct, slow) if stream else direct.complete(slow)
    error = await tally.run(work, UpstreamTimeout, 6)
    assert isinstance(error, UpstreamTimeout) and error.status == 504
    await asyncio.sleep(0.3)
    assert sum(hostile.seen.closed_early.values()) == 1  # the upstream saw the call end
    assert tally.report() == {"sent": 1, "answered": 0, "proper error": 1, "lost": 0}


async def test_an_idle_gap_is_cut(hostile: HostileUpstream, direct: DirectUpstream) -> None:
    tally = Tally()
    stalled = call(hostile.url, "stall", deadlines=Deadlines(total_s=None), idle_s=0.3)
    error = await tally.run(streamed(direct, stalled), UpstreamTimeout, 3)
    assert isinstance(error, UpstreamTimeout)
    assert tally.report()["lost"] == 0


@pytest.mark.parametrize("mode", ["queue", "blank"])
async def test_keep_alives_do_not_reset_the_first_byte_deadline(
    hostile: HostileUpstream, direct: DirectUpstream, mode: str
) -> None:
    """DeepSeek's queue: keep-alive comments (streams) or blank lines (whole answers) every
    50 ms; the answer's first byte is still due at `first_byte_s`."""
    tally = Tally()
    queued = call(hostile.url, mode, deadlines=Deadlines(first_byte_s=0.4, total_s=None))
    work = streamed(direct, queued) if mode == "queue" else direct.complete(queued)
    started = time.monotonic()
    error = await tally.run(work, UpstreamQueued, 8)
    assert isinstance(error, UpstreamQueued) and error.status == 504
    assert 0.35 <= time.monotonic() - started < 6  # keep-alives every 50 ms all along
    assert tally.report()["lost"] == 0


async def test_a_request_read_then_dropped_is_sent_once(
    hostile: HostileUpstream, direct: DirectUpstream
) -> None:
    tally = Tally()
    assert await tally.run(direct.complete(call(hostile.url, "ok")), None, 5)
    # the pooled connection is reused, and the upstream drops it after reading the request
    error = await tally.run(direct.complete(call(hostile.url, "drop")), UpstreamError, 5)
    assert isinstance(error, UpstreamError) and error.status == 502
    error = await tally.run(streamed(direct, call(hostile.url, "drop")), UpstreamError, 5)
    assert hostile.seen.requests["drop"] == 2  # each sent once, never replayed
    assert tally.report()["lost"] == 0


@pytest.mark.parametrize("mode", ["switch", "huge", "many", "bomb"])
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_or_oversized_answers_are_502s(
    hostile: HostileUpstream, mode: str, stream: bool
) -> None:
    """101 answers, a 100 KB header, 10,000 headers, a body that inflates to 400 MB."""
    direct = DirectUpstream(limits=ClientLimits(max_body_bytes=1024 * 1024))
    tally = Tally()
    try:
        c = call(hostile.url, mode)
        work = streamed(direct, c) if stream and mode != "bomb" else direct.complete(c)
        error = await tally.run(work, UpstreamError, 5)
        assert isinstance(error, UpstreamError) and error.status == 502
        assert await tally.run(direct.complete(call(hostile.url, "ok")), None, 5)
    finally:
        await direct.aclose()
    assert tally.report() == {"sent": 2, "answered": 1, "proper error": 1, "lost": 0}


@pytest.mark.parametrize("mode", ["partial", "phantom"])
async def test_a_connection_that_got_bytes_nobody_asked_for_is_not_reused(
    hostile: HostileUpstream, direct: DirectUpstream, mode: str
) -> None:
    """Half a head after an answer, or a whole second answer while idle: the next request
    goes on a new connection and gets its own answer."""
    tally = Tally()
    first = await tally.run(direct.complete(call(hostile.url, mode)), None, 5)
    await asyncio.sleep(0.3)  # the phantom answer arrives while the connection is idle
    second = await tally.run(direct.complete(call(hostile.url, "ok")), None, 5)
    for completion in (first, second):
        assert completion.body["choices"][0]["message"]["content"] == "fine"  # type: ignore[attr-defined]
    assert hostile.seen.accepted == 2
    assert tally.report() == {"sent": 2, "answered": 2, "proper error": 0, "lost": 0}


async def test_a_full_pool_answers_503_with_retry_after_in_time(
    hostile: HostileUpstream,
) -> None:
    direct = DirectUpstream(limits=ClientLimits(per_origin=1))
    tally = Tally()
    try:
        patient = Deadlines(first_byte_s=5.0, total_s=6.0)
        holding = asyncio.ensure_future(
            direct.complete(call(hostile.url, "slow", deadlines=patient))
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        waits = Deadlines(connect_s=0.5, pool_wait_s=0.3)  # waiting and connecting: 0.8 s
        refused = direct.complete(call(hostile.url, "ok", deadlines=waits))
        error = await tally.run(refused, UpstreamBusy, 3)
        assert isinstance(error, UpstreamBusy)
        assert (error.status, error.headers["Retry-After"]) == (503, "1")
        assert 0.3 <= time.monotonic() - started < 1.5
        assert await tally.run(holding, None, 5)
        assert await tally.run(direct.complete(call(hostile.url, "ok")), None, 5)  # free again
    finally:
        await direct.aclose()
    assert hostile.seen.requests["ok"] == 1  # the refused request never reached the upstream
    assert tally.report() == {"sent": 3, "answered": 2, "proper error": 1, "lost": 0}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cancelled_call_closes_the_upstream_connection(
    hostile: HostileUpstream, direct: DirectUpstream, stream: bool
) -> None:
    slow = call(hostile.url, "slow" if not stream else "queue")
    work: Callable[[], Awaitable[object]] = (
        (lambda: streamed(direct, slow)) if stream else (lambda: direct.complete(slow))
    )
    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert sum(hostile.seen.closed_early.values()) == 1  # the upstream saw the client leave


async def test_every_key_is_scrubbed_from_an_echoed_error(
    hostile: HostileUpstream, direct: DirectUpstream
) -> None:
    """A key the transport was not built with (as after a policy reload naming a new key),
    shaped like no known key format, is still never echoed back."""
    tally = Tally()
    reloaded = "tok_NewlyReloadedKey_0123456789"
    error = await tally.run(
        direct.complete(call(hostile.url, "echo", api_key=reloaded)), UpstreamRejected, 5
    )
    assert isinstance(error, UpstreamRejected)
    assert hostile.seen.headers[-1] == f"authorization: Bearer {reloaded}".encode()
    assert reloaded not in error.message and "[redacted]" in error.message
    assert tally.report()["lost"] == 0
