"""The simulated DeepSeek refuses what DeepSeek refuses, with DeepSeek's error bodies, and behaves
as DeepSeek does around the answer: ignored fields, queued requests, empty events, balance
errors and the prefix-unit cache rule. Raw HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from router.simulator.kvcache import PrefixCache
from router.simulator.server import (
    RunningSimulator,
    SimulatorConfig,
    default_profiles,
    start_in_thread,
)

PRO = "deepseek-v4-pro"
FLASH = "deepseek-flash"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.fixture(scope="module")
def strict() -> Iterator[RunningSimulator]:
    config = SimulatorConfig(profiles=default_profiles(), speed=0, keepalive_interval_s=0.02)
    with start_in_thread(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(strict: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict.url, timeout=10) as http:
        yield http


def post(client: httpx.Client, messages: list[dict[str, Any]], **params: Any) -> httpx.Response:
    body = {"model": params.pop("model", FLASH), "messages": messages, **params}
    return client.post("/chat/completions", json=body)


def say(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def refused(response: httpx.Response, status: int, starts: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"].startswith(starts), error["message"]
    assert error["code"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("role", ["developer", "function"])
def test_roles_other_than_system_user_assistant_tool_are_refused(
    client: httpx.Client, role: str
) -> None:
    messages = [{"role": role, "content": "Be brief.", "name": "f"}, *say("hi")]
    error = refused(post(client, messages), 400, "Failed to deserialize the JSON body")
    assert f"messages[0].role: unknown variant `{role}`" in error["message"]
    assert "expected one of `system`, `user`, `assistant`, `tool`" in error["message"]


def test_json_schema_response_format_is_refused(client: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    refused(post(client, say("json please"), response_format=fmt), 400, "This response_format")


def test_json_object_needs_the_word_json_in_the_prompt(client: httpx.Client) -> None:
    fmt = {"type": "json_object"}
    refused(post(client, say("Three cities."), response_format=fmt), 400, "Prompt must contain")
    answer = post(client, say("Three cities as JSON."), response_format=fmt)
    assert answer.status_code == 200
    assert isinstance(orjson.loads(answer.json()["choices"][0]["message"]["content"]), dict)
    system = [{"role": "system", "content": "Reply in json."}, *say("Three cities.")]
    assert post(client, system, response_format=fmt).status_code == 200


def test_images_are_refused_on_pro_and_read_on_flash(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
    error = refused(post(client, messages, model=PRO), 400, "Failed to deserialize")
    assert "messages[0]: unknown variant `image_url`, expected `text`" in error["message"]
    assert post(client, messages, model=FLASH).status_code == 200


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner", "gpt-4o"])
def test_unknown_and_retired_model_ids_are_refused(client: httpx.Client, model: str) -> None:
    refused(post(client, say("hi"), model=model), 400, "Model Not Exist")


def test_listed_models_are_the_served_ids(client: httpx.Client) -> None:
    ids = {m["id"] for m in client.get("/models").json()["data"]}
    assert {FLASH, PRO, "deepseek-v4-flash"} <= ids
    assert not ids & {"deepseek-chat", "deepseek-reasoner"}


def test_max_completion_tokens_is_ignored(client: httpx.Client) -> None:
    text = "A long answer, please."
    free = post(client, say(text), thinking={"type": "disabled"}).json()
    capped = post(client, say(text), thinking={"type": "disabled"}, max_completion_tokens=5)
    assert capped.json()["usage"]["completion_tokens"] == free["usage"]["completion_tokens"] > 5
    by_max_tokens = post(client, say(text), thinking={"type": "disabled"}, max_tokens=5).json()
    assert by_max_tokens["usage"]["completion_tokens"] <= 5


def test_user_id_outside_deepseeks_alphabet_is_refused(client: httpx.Client) -> None:
    assert post(client, say("hi"), user_id="team-7_a").status_code == 200
    refused(post(client, say("hi"), user_id="alice@example.com"), 400, "Invalid user_id")
    refused(post(client, say("hi"), user_id="x" * 513), 400, "Invalid user_id")


def test_insufficient_balance_on_demand_is_deepseeks_402(client: httpx.Client) -> None:
    response = post(client, say("hi [[sim:status=402]]"))
    assert response.status_code == 402
    assert response.json() == {
        "error": {
            "message": "Insufficient Balance",
            "type": "unknown_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }


def test_queued_non_stream_answer_sends_blank_lines_first(client: httpx.Client) -> None:
    started = time.monotonic()
    response = post(client, say("hi [[sim:queue_ms=150]]"))
    assert time.monotonic() - started >= 0.15
    assert response.status_code == 200
    head, _, body = response.text.partition("{")
    assert head and set(head) == {"\n"}
    assert orjson.loads("{" + body)["choices"][0]["message"]["content"]


def test_queued_stream_sends_keep_alive_comments_before_the_first_event(
    client: httpx.Client,
) -> None:
    response = post(client, say("hi [[sim:queue_ms=150]]"), stream=True)
    lines = [line for line in response.text.split("\n") if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2
    assert set(lines[:first_data]) == {": keep-alive"}
    assert lines[-1] == "data: [DONE]"


def test_empty_data_events_on_demand(client: httpx.Client) -> None:
    response = post(client, say("hi [[sim:empty_events=3]]"), stream=True)
    events = [line for line in response.text.split("\n\n") if line]
    assert events[1:4] == ["data: "] * 3
    assert orjson.loads(events[0].removeprefix("data: "))["choices"]
    assert orjson.loads(events[4].removeprefix("data: "))["choices"]


def hit(client: httpx.Client, messages: list[dict[str, Any]], **params: Any) -> int:
    usage = post(client, messages, model=PRO, **params).json()["usage"]
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == usage["prompt_tokens"]
    )
    return int(usage["prompt_cache_hit_tokens"])


def test_a_shared_system_prompt_hits_only_once_it_is_a_persisted_unit(
    client: httpx.Client,
) -> None:
    system = {"role": "system", "content": "You analyse financial reports carefully. " * 30}
    assert hit(client, [system, *say("Summarise the report.")]) == 0
    assert hit(client, [system, *say("Analyse profitability.")]) == 0  # A+C misses A+B...
    assert hit(client, [system, *say("List the risks.")]) > 0  # ...but made A a unit
    assert hit(client, [system, *say("List the risks.")], user_id="other-user") == 0


def test_a_follow_up_turn_hits_the_previous_input_and_output_units(client: httpx.Client) -> None:
    turn1 = [{"role": "system", "content": "Answer briefly. " * 20}, *say("First question?")]
    first = post(client, turn1, model=PRO, thinking={"type": "disabled"}).json()
    reply = first["choices"][0]["message"]
    turn2 = [*turn1, {"role": "assistant", "content": reply["content"]}, *say("Next?")]
    usage = post(client, turn2, model=PRO, thinking={"type": "disabled"}).json()["usage"]
    assert usage["prompt_cache_hit_tokens"] > first["usage"]["prompt_tokens"]
    assert 0 < usage["prompt_cache_miss_tokens"] < 15


def test_prefix_units_are_persisted_at_fixed_intervals_of_long_inputs() -> None:
    cache = PrefixCache(interval_tokens=100)
    first = [(b"root", 0), (b"a", 60), (b"ab", 130), (b"abc", 260), (b"abcd", 300)]
    assert cache.lookup(first, b"out") == 0
    assert b"ab" in cache and b"a" not in cache
    later = [(b"root", 0), (b"a", 60), (b"ab", 130), (b"abx", 200)]
    assert cache.lookup(later, b"out2") == 130
