"""Simulated DeepSeek upstream for tests, demos and benchmarks. Does I/O: an HTTP server (raw ASGI).

The answers come from `router/simulator/text.py`; this module adds what a real server has around
them: routes, auth, latency, streaming, DeepSeek's prefix cache, a request log and fault injection.
It speaks both of DeepSeek's formats: OpenAI chat completions, and Anthropic messages under
`/anthropic` (`router/simulator/anthropic.py`). With a ground truth (`SimulatorConfig.truth`,
`router/simulator/truth.py`) answers carry a quality marker, judge requests get a verdict, and
`/_sim/truth` tells another process the truth of a prompt.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from router.simulator.anthropic import (
    MESSAGES_PATHS,
    THINKING_NOT_PASSED_BACK,
    error_envelope,
    message_events,
    message_json,
    parse_messages_request,
)
from router.simulator.anthropic import usage_json as message_usage_json
from router.simulator.faults import FaultSpec, SimError, parse_fault
from router.simulator.kvcache import PrefixCache
from router.simulator.pace import (
    Queue,
    send_body,
    send_error,
    send_json,
    send_queued,
    stream,
    with_empty,
)
from router.simulator.text import (
    ChatRequest,
    Choice,
    check_context,
    check_images,
    check_reasoning_passed_back,
    output_digest,
    parse_chat_request,
)
from router.simulator.truth import GroundTruth, answers, truth_json
from router.simulator.wire import completion_json, stream_events, usage_json

_CHAT_PATHS: Final = frozenset(
    {"/chat/completions", "/v1/chat/completions", "/beta/chat/completions"}
)
_MODEL_PATHS: Final = frozenset({"/models", "/v1/models"})
_CHUNK_SECONDS: Final = 0.1  # stream pacing: one chunk per ~100 ms of generation at speed 1


@dataclass(frozen=True)
class ModelProfile:
    """How fast one simulated model answers."""

    ttft_ms: float
    tokens_per_s: float
    max_context_tokens: int = 1_000_000
    thinking_by_default: bool = True
    vision: bool = False  # reads image parts (DeepSeek: the Flash ids, not Pro)

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.tokens_per_s <= 0 or self.max_context_tokens < 1:
            raise ValueError(f"invalid model profile: {self}")


@dataclass(frozen=True)
class SimulatorConfig:
    profiles: Mapping[str, ModelProfile]  # keyed by upstream model id
    speed: float = 1.0  # multiplies all latencies; 0 = none (benchmarks), 0.01 = fast tests
    api_key: str | None = None  # if set, requests need `Authorization: Bearer <api_key>`
    fault_rate: float = 0.0  # share of chat requests answered with fault_status (seeded)
    fault_status: int = 500
    seed: int = 0
    max_output_tokens: int = 400  # natural answer length is drawn from [12, this]
    max_recorded_requests: int = 10_000
    keepalive_interval_s: float = 0.1  # between keep-alive lines while a request is "queued"
    truth: GroundTruth | None = None  # hidden difficulty: quality markers and the judge

    def __post_init__(self) -> None:
        if self.speed < 0 or not 0 <= self.fault_rate <= 1 or self.max_output_tokens < 1:
            raise ValueError("speed must be >= 0, fault_rate in [0, 1], max_output_tokens >= 1")
        if not 400 <= self.fault_status <= 599:
            raise ValueError("fault_status must be an HTTP error status")


def default_profiles() -> dict[str, ModelProfile]:
    """The ids DeepSeek serves (pricing page checked 2026-11-30): `deepseek-flash` and
    `deepseek-v4-pro`, plus the retired Flash ids it still accepts; `deepseek-chat` and
    `deepseek-reasoner` were retired on 2026-07-24 and are unknown models now."""
    flash = ModelProfile(ttft_ms=300, tokens_per_s=60, vision=True)
    pro = ModelProfile(ttft_ms=900, tokens_per_s=30)
    return {
        "deepseek-flash": flash,
        "deepseek-v4-flash": flash,
        "deepseek-v4-flash-vision-exp": flash,
        "deepseek-v4-pro": pro,
    }


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: dict[str, Any] | None  # the parsed JSON object; None if absent or not an object


@dataclass
class _QueuedFault:
    spec: FaultSpec
    model: str | None
    remaining: int


@dataclass(frozen=True)
class _Answer:
    """A request's answers, and how (and how fast) they go out."""

    choices: tuple[Choice, ...]
    prompt_tokens: int
    hit: int  # prompt tokens found in the prefix cache
    fault: FaultSpec
    queue: Queue
    ttft_s: float
    per_token_s: float
    chunk_tokens: int  # tokens per stream event

    async def stream(
        self,
        events: Iterator[tuple[bytes, int]],
        receive: Receive,
        send: Send,
        last: bytes = b"data: [DONE]\n\n",
    ) -> None:
        paced = with_empty(events, self.fault.empty_events or 0)
        await stream(
            paced, self.ttft_s, self.per_token_s, self.fault, self.queue, receive, send, last
        )

    async def send(self, body: bytes, send: Send) -> None:
        """A whole answer, after the keep-alive lines of a queued request."""
        if self.queue.ms:
            await send_queued(send, self.queue)
        longest = max(c.completion_tokens() for c in self.choices)
        await asyncio.sleep(self.ttft_s + longest * self.per_token_s)
        if self.queue.ms:  # the head and the blank lines are out: the body follows them
            await send({"type": "http.response.body", "body": body})
            return
        await send_body(send, 200, body, drop=self.fault.disconnect_after is not None)


class SimulatorApp:
    """The ASGI application. Build it with `create_simulator_app`."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        # Mutated only on the event loop; the lock guards the log, which tests read from outside.
        self._recorded: deque[RecordedRequest] = deque(maxlen=config.max_recorded_requests)
        self._lock = threading.Lock()
        self._prefixes = PrefixCache()  # DeepSeek's context cache on disk
        self._faults: list[_QueuedFault] = []
        self._stats: Counter[tuple[str, str]] = Counter()  # (model, status or "disconnect")
        self._rng = random.Random(config.seed)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._recorded)

    def clear(self) -> None:
        """Forget recorded requests and stats (not the prefix cache or queued faults)."""
        with self._lock:
            self._recorded.clear()
            self._stats.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"].rstrip("/") or "/"
        method: str = scope["method"]
        raw = await _read_body(receive)
        if path.startswith("/_sim/"):
            await self._control(method, path, raw, send)
            return
        anthropic = path in MESSAGES_PATHS
        if path not in _CHAT_PATHS and path not in _MODEL_PATHS and not anthropic:
            await send_error(send, SimError(404, f"Not Found: {path}"))
            return
        headers = _headers(scope)
        body = _json_object(raw)
        with self._lock:
            self._recorded.append(RecordedRequest(method, path, headers, body))
        expected = "GET" if path in _MODEL_PATHS else "POST"
        try:
            self._check_auth(headers)
            if method != expected:
                raise SimError(405, "Method Not Allowed")
            if path in _MODEL_PATHS:
                await send_json(send, 200, self._models())
            elif anthropic:
                await self._messages(body, receive, send)
            else:
                await self._chat(raw, body, receive, send)
        except SimError as error:
            self._count(body.get("model") if body else None, str(error.status))
            await send_error(send, error, error_envelope(error) if anthropic else None)

    def _check_auth(self, headers: Mapping[str, str]) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = headers.get("authorization", "")
        if "x-api-key" in headers and not given:  # the Anthropic format's header
            given = f"Bearer {headers['x-api-key']}"
        if not given.startswith("Bearer "):
            raise SimError(401, "Authentication Fails, no api key provided")
        if given[len("Bearer ") :] != key:
            raise SimError(401, f"Authentication Fails, Your api key: ****{given[-4:]} is invalid")

    def _models(self) -> dict[str, object]:
        data = [{"id": m, "object": "model", "owned_by": "deepseek"} for m in self.config.profiles]
        return {"object": "list", "data": data}

    async def _chat(
        self, raw: bytes, body: dict[str, Any] | None, receive: Receive, send: Send
    ) -> None:
        if body is None:
            raise SimError(400 if raw else 422, "Failed to parse the request body as JSON")
        request = parse_chat_request(body)
        answer = await self._answer(request, lambda: check_reasoning_passed_back(request.messages))
        choices = answer.choices
        usage = usage_json(answer.prompt_tokens, answer.hit, choices)
        if request.stream:
            events = stream_events(request, choices, usage, answer.chunk_tokens)
            await answer.stream(events, receive, send)
            return
        await answer.send(completion_json(request, choices, usage), send)

    async def _messages(self, body: dict[str, Any] | None, receive: Receive, send: Send) -> None:
        """The Anthropic format: the chat model's answer as a message or its stream events."""
        call = parse_messages_request(body, tuple(self.config.profiles))
        request = call.request

        def check() -> None:
            if call.thinking_blocks_missing:
                raise SimError(400, THINKING_NOT_PASSED_BACK)

        answer = await self._answer(request, check)
        (choice,) = answer.choices
        usage = message_usage_json(answer.prompt_tokens, answer.hit, choice)
        if request.stream:
            events = message_events(request.model, choice, usage, answer.chunk_tokens)
            await answer.stream(events, receive, send, last=b"")
            return
        await answer.send(message_json(request.model, choice, usage), send)

    async def _answer(self, request: ChatRequest, thinking_check: Callable[[], None]) -> _Answer:
        """What both formats share: the model, faults, DeepSeek's checks (`thinking_check` runs
        when thinking is on), the answers, the prefix cache and the pace."""
        profile = self.config.profiles.get(request.model)
        if profile is None:
            raise SimError(400, "Model Not Exist")
        check_images(request, profile.vision)
        fault = self._fault(request)
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if (error := fault.error()) is not None:
            raise error
        thinking = profile.thinking_by_default if request.thinking is None else request.thinking
        if thinking:
            thinking_check()
        prefixes = request.prefixes()
        prompt_tokens = prefixes[-1][1]
        check_context(request, prompt_tokens, profile.max_context_tokens)
        choices = answers(self.config.truth, request, thinking, self.config.max_output_tokens)
        hit = self._prefixes.lookup(prefixes, output_digest(prefixes[-1][0], choices[0]))
        scale = self.config.speed * (fault.slow or 1.0)
        self._count(request.model, "200" if fault.disconnect_after is None else "disconnect")
        return _Answer(
            choices,
            prompt_tokens,
            hit,
            fault,
            Queue(fault.queue_ms or 0.0, self.config.keepalive_interval_s),
            ttft_s=profile.ttft_ms / 1000 * scale,
            per_token_s=scale / profile.tokens_per_s,
            chunk_tokens=max(1, round(profile.tokens_per_s * _CHUNK_SECONDS)),
        )

    def _fault(self, request: ChatRequest) -> FaultSpec:
        """Markers win over a queued fault; the random fault_rate applies only if no status is set."""
        queued = self._queued_fault(request.model)
        fault = request.fault if queued is None else request.fault.over(queued)
        rate = self.config.fault_rate
        if fault.status is None and rate and self._rng.random() < rate:
            return replace(fault, status=self.config.fault_status)
        return fault

    def _queued_fault(self, model: str) -> FaultSpec | None:
        for queued in self._faults:
            if queued.model is None or queued.model == model:
                queued.remaining -= 1
                if queued.remaining <= 0:
                    self._faults.remove(queued)
                return queued.spec
        return None

    def _count(self, model: object, outcome: str) -> None:
        self._stats[(model if isinstance(model, str) else "", outcome)] += 1

    async def _control(self, method: str, path: str, raw: bytes, send: Send) -> None:
        """The `/_sim/*` endpoints that let another process inspect and steer the simulator."""
        if path == "/_sim/requests" and method == "GET":
            await send_json(send, 200, [asdict(r) for r in self.requests()])
        elif path == "/_sim/requests" and method == "DELETE":
            self.clear()
            await send_json(send, 200, {"cleared": True})
        elif path == "/_sim/stats" and method == "GET":
            await send_json(send, 200, self._stats_json())
        elif path == "/_sim/faults" and method == "POST":
            try:
                queued = _queued(_json_object(raw))
            except SimError as error:
                await send_error(send, error)
                return
            self._faults.append(queued)
            await send_json(send, 200, {"queued": queued.remaining})
        elif path == "/_sim/truth" and method == "POST":
            try:
                await send_json(send, 200, truth_json(self.config.truth, _json_object(raw)))
            except SimError as error:
                await send_error(send, error)
        elif path == "/_sim/faults" and method == "DELETE":
            self._faults.clear()
            await send_json(send, 200, {"cleared": True})
        else:
            await send_error(send, SimError(404, f"Not Found: {method} {path}"))

    def _stats_json(self) -> dict[str, object]:
        by_model: dict[str, dict[str, int]] = {}
        for (model, outcome), count in sorted(self._stats.items()):
            by_model.setdefault(model, {})[outcome] = count
        return {"total": sum(self._stats.values()), "by_model": by_model}


def _queued(body: dict[str, Any] | None) -> _QueuedFault:
    if body is None:
        raise SimError(422, "Invalid fault: the body must be a JSON object")
    count, model = body.get("count", 1), body.get("model")
    if not isinstance(count, int) or count < 1 or not isinstance(model, str | None):
        raise SimError(422, "Invalid fault: count must be an integer >= 1, model a string")
    return _QueuedFault(parse_fault(body), model, count)


def create_simulator_app(config: SimulatorConfig) -> SimulatorApp:
    return SimulatorApp(config)


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class RunningSimulator:
    """A simulator served by uvicorn on a background thread; use as a context manager."""

    def __init__(
        self, app: SimulatorApp, server: uvicorn.Server, thread: threading.Thread, url: str
    ) -> None:
        self.app = app
        self.url = url
        self._server = server
        self._thread = thread

    def requests(self) -> list[RecordedRequest]:
        return self.app.requests()

    def clear(self) -> None:
        self.app.clear()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
) -> RunningSimulator:
    """Serve on a background thread; returns once the server accepts connections.

    Given a PEM certificate chain (and its key, unless in the same file) it serves HTTPS, as
    DeepSeek does."""
    app = create_simulator_app(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port: int = sock.getsockname()[1]
    uvicorn_config = _uvicorn_config(
        app, host, bound_port, log_level="warning", certfile=ssl_certfile, keyfile=ssl_keyfile
    )
    server = uvicorn.Server(uvicorn_config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="flashpro-simulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the simulator did not start")
        time.sleep(0.005)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    scheme = "http" if ssl_certfile is None else "https"
    return RunningSimulator(app, server, thread, f"{scheme}://{url_host}:{bound_port}")


def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve in the foreground until interrupted (`flashpro simulate-upstream`)."""
    uvicorn.Server(
        _uvicorn_config(create_simulator_app(config), host, port, log_level="info")
    ).run()


def _uvicorn_config(
    app: SimulatorApp,
    host: str,
    port: int,
    *,
    log_level: str,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",  # uvloop and httptools when installed (uvicorn[standard])
        http="auto",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        backlog=4096,
        timeout_graceful_shutdown=1,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
