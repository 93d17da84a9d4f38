"""Hostile chat bodies over HTTP: deep nesting, huge strings, wrong types, contradictory tool
settings. Each gets its proper status in OpenAI's error format with a bounded message (or an
answer, when it is valid); nothing is lost; the decision log keeps writing; the server keeps
serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from router.simulator.server import RunningSimulator
from tests.conftest import WEATHER_TOOL, wait_until
from tests.traffic import observed_flashpro

USER = [{"role": "user", "content": "hello"}]
MB = 1_000_000


def nested(levels: int) -> bytes:
    """JSON text nesting objects and arrays `levels` deep (the stdlib encoder stops near 1000)."""
    opening = "".join("[" if i % 2 else '{"k":' for i in range(levels))
    closing = "".join("]" if i % 2 else "}" for i in reversed(range(levels)))
    return f"{opening}1{closing}".encode()


def with_raw(field: str, raw: bytes) -> bytes:
    """A valid chat body with `field` set to the JSON text `raw`."""
    return json.dumps(chat()).encode()[:-1] + f', "{field}": '.encode() + raw + b"}"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "flash", "messages": USER, **fields}


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    expect: frozenset[int]


def case(name: str, body: Any, *expect: int) -> Hostile:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Hostile(name, raw, frozenset(expect))


PART = b'{"type": "text", "text": "hi", "extra": ' + nested(300) + b"}"
STRING_FUNCTION = {"type": "function", "function": "get_weather"}
CASES = [
    *(
        case(f"{levels} levels in {field}", with_raw(field, nested(levels)), 400)
        for levels in (65, 255, 300, 1023)
        for field in ("tools", "response_format", "tool_choice", "logit_bias", "metadata")
    ),
    case("1100 levels (past the JSON parser's own limit)", b"[" * 1100 + b"]" * 1100, 400),
    case(
        "300 levels inside a content part",
        with_raw("messages", b'[{"role": "user", "content": [' + PART + b"]}]"),
        400,
    ),
    case("1 MB model name", {"model": "m" * MB, "messages": USER}, 404),
    case("1 MB role", {"model": "flash", "messages": [{"role": "r" * MB, "content": "x"}]}, 400),
    case("1 MB logit_bias key", chat(logit_bias={"k" * MB: 1}), 200, 400),
    case("1 MB unknown field name", {**chat(), "f" * MB: 1}, 200),
    case("messages is a string", chat(messages="hello"), 400),
    case("a message is a number", chat(messages=[1]), 400),
    case("model is a number", {"model": 5, "messages": USER}, 400),
    case("stream is a list", chat(stream=[1]), 400),
    case("max_tokens is 10^40", chat(max_tokens=10**40), 400),
    case(
        "n is 1e30", b'{"model":"flash","messages":[{"role":"user","content":"x"}],"n":1e30}', 400
    ),
    case("temperature is a word", chat(temperature="hot"), 400),
    case("tools is an object", chat(tools={"a": 1}), 400),
    case("a tool is a number", chat(tools=[1]), 400),
    case("tool_choice is a number", chat(tool_choice=5), 400),
    case(
        "mixed tools, tool_choice.function a string",
        chat(tools=[WEATHER_TOOL, {"type": "web_search"}], tool_choice=STRING_FUNCTION),
        400,
    ),
    case(
        "tool_choice.function a string",
        chat(tools=[WEATHER_TOOL], tool_choice=STRING_FUNCTION),
        400,
    ),
    case(
        "tool_choice.function.name a number",
        chat(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": 5}}),
        400,
    ),
    case(
        "NaN",
        b'{"model":"flash","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        400,
    ),
    case(
        "invalid UTF-8", b'{"model":"flash","messages":[{"role":"user","content":"\xff\xfe"}]}', 400
    ),
    case(
        "a lone surrogate",
        b'{"model":"flash","messages":[{"role":"user","content":"\\ud800"}]}',
        400,
    ),
    case("a JSON array", b"[1, 2, 3]", 400),
    case("JSON null", b"null", 400),
    case("an empty body", b"", 400),
]


@pytest.fixture(scope="module")
def served(
    simulator: RunningSimulator, upstream_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    with observed_flashpro(simulator, tmp_path_factory.mktemp("hostile")) as served:
        yield served


def proper_error(response: httpx.Response) -> bool:
    try:
        error = orjson.loads(response.content)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    bounded = len(response.content) <= 2048 and len(error.get("param") or "") <= 256
    return set(error) == {"message", "type", "param", "code"} and bounded


def test_hostile_bodies_get_proper_answers_and_none_is_lost(served: tuple[str, Path]) -> None:
    base, log = served
    sent = answered = proper = lost = 0
    problems: list[str] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for hostile in CASES:
            sent += 1
            try:
                response = client.post(
                    "/v1/chat/completions",
                    content=hostile.body,
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                lost += 1
                problems.append(f"{hostile.name}: {exc!r}")
                continue
            answered += 1
            ok = response.status_code in hostile.expect and (
                response.status_code == 200 or proper_error(response)
            )
            proper += ok
            if not ok:
                problems.append(f"{hostile.name}: {response.status_code} {response.text[:200]}")
        print(f"hostile bodies: sent {sent}, answered {answered}, proper {proper}, lost {lost}")
        assert lost == 0 and proper == sent, "\n".join(problems)
        after = client.post(
            "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": "after"}])
        )
        assert after.status_code == 200
        rid = after.headers["x-flashpro-request-id"]

    def logged() -> bool:
        if not log.exists():
            return False
        return rid in {json.loads(line)["id"] for line in log.read_bytes().split(b"\n") if line}

    wait_until(logged, timeout_s=10, what="the decision log")
