"""The chat endpoint's edge (router/http/chat.py): parsing once per body, request ids, methods, and
the access log's buffered lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace

import httpx
import orjson
import pytest

from router.app import build_deps
from router.errors import InvalidRequest
from router.http.chat import Intake, request_id_for
from router.observe.logs import ACCESS_LOGGER, configure_access_log, emit, flush_access_log
from router.observe.observer import Observer
from router.routing.classify import Assessment, Classifier
from router.routing.routed import RoutingHolder
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from tests.conftest import serve_app, settings_for, wait_until


def body(text: str, **fields: object) -> bytes:
    return orjson.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": text}], **fields}
    )


def test_identical_bodies_share_one_parsed_request() -> None:
    intake = Intake()
    first = intake.parse(body("hello"))
    assert intake.parse(body("hello")) is first
    assert intake.parse(body("hello again")) is not first


def test_invalid_bodies_fail_every_time() -> None:
    intake = Intake()
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="messages"):
            intake.parse(b'{"model": "auto", "messages": []}')
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        intake.parse(b"{")


def test_intake_is_bounded_and_skips_large_bodies() -> None:
    intake = Intake(entries=2, max_body=200)
    first = intake.parse(body("one"))
    intake.parse(body("two"))
    intake.parse(body("three"))  # evicts the oldest
    assert intake.parse(body("one")) is not first
    large = body("x" * 500)
    assert intake.parse(large) is not intake.parse(large)


def test_intake_keeps_at_most_its_bytes_of_bodies() -> None:
    intake = Intake(entries=100, max_body=1000, max_bytes=2000)
    bodies = [body(f"{i} " + "y" * 500) for i in range(10)]
    parsed = [intake.parse(b) for b in bodies]
    assert intake.bytes <= 2000 and intake.bytes == sum(len(b) for b in bodies[-3:])
    assert intake.parse(bodies[-1]) is parsed[-1]  # the newest are kept
    assert intake.parse(bodies[0]) is not parsed[0]  # the oldest went


def test_derived_values_are_computed_once_per_request_object() -> None:
    request = ChatRequest.model_validate(orjson.loads(body("hi")))
    calls: list[int] = []

    def derive(r: ChatRequest) -> int:
        calls.append(1)
        return len(r.messages)

    assert request.derived("n", derive) == request.derived("n", derive) == 1
    assert len(calls) == 1
    owner = object()
    assert request.derived("n", derive, owner) == request.derived("n", derive, owner) == 1
    assert len(calls) == 2  # another owner (a reloaded policy, another classifier) recomputes
    assert request.model_dump()["messages"][0]["content"] == "hi"  # not a field of the request


def test_request_ids_keep_plain_client_ids_and_make_unique_ones() -> None:
    assert request_id_for("trace-42.a:b_c") == "trace-42.a:b_c"
    made = {request_id_for(given) for given in (None, "", "x" * 65, "bad id", "<script>")}
    assert len(made) == 5
    assert all(len(rid) == 20 and rid.isalnum() for rid in made)


@dataclass
class CountingClassifier:
    inner: Classifier
    seen: list[str] = field(default_factory=list)

    def assess(self, request: ChatRequest) -> Assessment:
        self.seen.append(request.messages[-1].text())
        return self.inner.assess(request)

    def threshold_for_share(self, share: float) -> float:
        return self.inner.threshold_for_share(share)


def test_a_repeated_body_is_classified_once_and_still_answered_each_time(
    simulator: RunningSimulator, upstream_env: None
) -> None:
    settings = settings_for(simulator)
    deps = build_deps(settings)
    counting = CountingClassifier(deps.classifier)
    routing = deps.routing.with_classifier(counting, "counting", os.environ)
    deps = replace(deps, routing=routing, holder=RoutingHolder(routing))
    with serve_app(settings, deps) as base:
        url = base + "/v1/chat/completions"
        headers = {"content-type": "application/json"}
        answers = [
            httpx.post(url, content=body("same question"), headers=headers) for _ in range(3)
        ]
        other = httpx.post(url, content=body("another question"), headers=headers)
    assert [a.status_code for a in answers] == [200, 200, 200] and other.status_code == 200
    assert len({a.json()["id"] for a in answers}) == 3  # not cached: each went upstream
    assert counting.seen == ["same question", "another question"]
    assert len({a.headers["x-flashpro-request-id"] for a in answers}) == 3


def test_other_methods_on_the_chat_path_are_refused_in_openai_format(flashpro: str) -> None:
    response = httpx.get(flashpro + "/v1/chat/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-flashpro-request-id"]
    assert httpx.get(flashpro + "/healthz").status_code == 200  # still serving


def test_a_client_request_id_is_echoed(flashpro: str) -> None:
    response = httpx.post(
        flashpro + "/v1/chat/completions",
        content=body("echo my id"),
        headers={"content-type": "application/json", "x-request-id": "client-7"},
    )
    assert response.status_code == 200
    assert response.headers["x-flashpro-request-id"] == "client-7"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _reset_access_log() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_access_lines_are_not_flushed_one_by_one() -> None:
    out = CountingStream()
    logger = configure_access_log(out)
    try:
        logger.info(json.dumps({"request_id": "x"}))
        emit(logger, {"request_id": "y"})  # the direct path, without a LogRecord
        assert out.flushes == 0
        flush_access_log()
        assert out.flushes == 1
    finally:
        _reset_access_log()
    assert [json.loads(line)["request_id"] for line in out.getvalue().split("\n") if line] == [
        "x",
        "y",
    ]


def test_the_observer_flushes_the_access_log_while_running_and_at_the_end() -> None:
    out = CountingStream()
    logger = configure_access_log(out)
    seen: list[int] = []

    async def run() -> None:
        async with Observer().running():
            logger.info("one")
            await asyncio.sleep(0.7)  # one periodic flush (every 0.5 s)
            seen.append(out.flushes)

    try:
        asyncio.run(run())
    finally:
        _reset_access_log()
    assert seen[0] >= 1 and out.flushes > seen[0]
    assert out.getvalue() == "one\n"


def test_a_client_that_leaves_mid_body_is_counted_and_the_server_keeps_serving(
    simulator: RunningSimulator, upstream_env: None
) -> None:
    settings = settings_for(simulator)
    with serve_app(settings, build_deps(settings)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                b'{"model": "auto", "messages": ['
            )
            time.sleep(0.2)  # the handler is waiting for the rest of the body

        def counted() -> bool:
            text = httpx.get(base + "/metrics").text
            return 'error="client_disconnected"' in text

        wait_until(counted, timeout_s=5, what="the abandoned request counted")
        assert (
            httpx.post(
                base + "/v1/chat/completions",
                content=body("still here?"),
                headers={"content-type": "application/json"},
            ).status_code
            == 200
        )
