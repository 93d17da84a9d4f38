"""The Responses front door end to end: the official openai SDK's Responses client -> flashpro
(the chat pipeline) -> the simulated DeepSeek server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.app import build_deps
from router.pipeline import Deps
from router.routing.classify import FixedScoreClassifier
from router.routing.policy import load_policy
from router.routing.routed import Routing
from router.simulator.server import RunningSimulator
from router.state.reasoning import ReasoningMemory
from router.state.responses import ResponseStore
from router.upstream.base import LiteLLMUpstream
from tests.conftest import UPSTREAM_KEY, RedisServer, serve_app, settings_for, wait_until
from tests.fault_policy import CLIENT_KEY, keyed_flashpro

FUNCTION_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(base: str, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def chat_bodies(sim: RunningSimulator) -> list[dict[str, Any]]:
    bodies = [r.body for r in sim.requests() if r.path.endswith("/chat/completions")]
    assert bodies, "the upstream received no chat request"
    return [body for body in bodies if body is not None]


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The data of each server-sent event, checking the `event:` line names its type."""
    events: list[dict[str, Any]] = []
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == name
            events.append(data)
    return events


@pytest.fixture(scope="module")
def fixed(simulator: RunningSimulator, upstream_env: None) -> Iterator[str]:
    """flashpro whose classifier scores every request as easy: `auto` routes to Flash."""
    policy, version = load_policy(None)
    classifier = FixedScoreClassifier(score=0.0, reasoning=False)
    deps = Deps(
        routing=Routing.build(policy, version, classifier, os.environ),
        upstream=LiteLLMUpstream(secrets=(UPSTREAM_KEY,)),
        memory=ReasoningMemory(),
        api_base=simulator.url,
        responses=ResponseStore.in_memory(),
    )
    with serve_app(settings_for(simulator), deps) as base:
        yield base


def test_text_answer_in_the_responses_format(flashpro: str, sim: RunningSimulator) -> None:
    raw = client(flashpro).responses.with_raw_response.create(
        model="auto", input="What is the capital of France?", instructions="Be brief."
    )
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0
    assert raw.headers["x-flashpro-tier"] in ("flash", "pro", "pro-max")
    assert raw.headers["x-flashpro-model"] == response.model
    assert float(raw.headers["x-flashpro-cost-usd"]) > 0
    sent = chat_bodies(sim)[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]


def test_routed_by_the_same_policy_as_chat(fixed: str, sim: RunningSimulator) -> None:
    raw = client(fixed).responses.with_raw_response.create(model="auto", input="hello")
    assert raw.headers["x-flashpro-tier"] == "flash"
    assert not raw.headers["x-flashpro-rule"].startswith("pinned")
    pinned = client(fixed).responses.with_raw_response.create(model="pro", input="hello")
    assert pinned.headers["x-flashpro-tier"] == "pro"
    assert pinned.headers["x-flashpro-rule"] == "pinned:pro"
    assert [body["model"] for body in chat_bodies(sim)] == ["deepseek-flash", "deepseek-v4-pro"]


def test_reasoning_is_surfaced_as_a_reasoning_item(flashpro: str) -> None:
    response = client(flashpro).responses.create(model="pro", input="Why is the sky blue?")
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.summary and reasoning.summary[0].text.startswith("Let me think.")
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    flash = client(flashpro).responses.create(model="flash", input="Why is the sky blue?")
    assert [item.type for item in flash.output] == ["message"]  # Flash does not think


def test_streamed_events_arrive_in_order(flashpro: str) -> None:
    stream = client(flashpro).responses.create(model="pro", input="Tell me a story.", stream=True)
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.output_text.delta" in kinds
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index(
        "response.output_text.delta"
    )
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert text and completed.output_text == text
    assert completed.id == events[0].response.id and completed.id.startswith("resp_")
    assert completed.usage is not None and completed.usage.output_tokens > 0
    done = [e.item.type for e in events if e.type == "response.output_item.done"]
    assert done == ["reasoning", "message"]


def test_a_stream_names_its_events_and_ends_without_done(flashpro: str) -> None:
    with httpx.stream(
        "POST",
        flashpro + "/v1/responses",
        json={"model": "flash", "input": "hi", "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-flashpro-tier"] == "flash"
        events = sse_events(response)
    assert events[-1]["type"] == "response.completed"


def test_a_tool_loop_sends_the_reasoning_back(flashpro: str, sim: RunningSimulator) -> None:
    api = client(flashpro)
    first = api.responses.create(
        model="pro", input="What is the weather in Paris?", tools=[FUNCTION_TOOL], store=False
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    # the client keeps the conversation itself (store=false), as Codex does
    history: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
    ]
    second = api.responses.create(model="pro", input=history, tools=[FUNCTION_TOOL], store=False)
    assert second.output_text
    assert not [item for item in second.output if item.type == "function_call"]
    sent = chat_bodies(sim)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert sent[1]["reasoning_content"].startswith("Let me think.")  # DeepSeek needs it back
    assert sent[2] == {"role": "tool", "content": "sunny, 21C", "tool_call_id": calls[0].call_id}


def test_a_tool_loop_continued_by_previous_response_id(
    flashpro: str, sim: RunningSimulator
) -> None:
    api = client(flashpro)
    first = api.responses.create(
        model="pro",
        input="What is the weather in Rome?",
        instructions="Use tools.",
        tools=[FUNCTION_TOOL],
    )
    call = next(item for item in first.output if item.type == "function_call")
    second = api.responses.create(
        model="pro",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],
        tools=[FUNCTION_TOOL],
    )
    assert second.previous_response_id == first.id and second.output_text
    sent = chat_bodies(sim)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]  # no instructions now
    assert sent[0]["content"] == "What is the weather in Rome?"
    assert sent[1]["reasoning_content"] and sent[2]["content"] == "rainy"
    third = api.responses.create(model="flash", previous_response_id=second.id, input="Thanks!")
    roles = [m["role"] for m in chat_bodies(sim)[-1]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    assert third.output_text


def test_streamed_function_call_arguments(flashpro: str) -> None:
    stream = client(flashpro).responses.create(
        model="pro", input="Weather in Oslo?", tools=[FUNCTION_TOOL], stream=True
    )
    events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert deltas and deltas == done.arguments
    item = next(
        e.item
        for e in events
        if e.type == "response.output_item.done" and e.item.type == "function_call"
    )
    assert item.name == "get_weather" and json.loads(item.arguments) == json.loads(deltas)
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output[-1].type == "function_call"


def test_a_streamed_response_can_be_continued(flashpro: str, sim: RunningSimulator) -> None:
    api = client(flashpro)
    events = list(api.responses.create(model="flash", input="Name a colour.", stream=True))
    first = events[-1].response
    again = api.responses.create(model="flash", previous_response_id=first.id, input="Another?")
    assert again.output_text
    sent = chat_bodies(sim)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] in (first.output_text, [{"type": "text", "text": first.output_text}])


def test_unknown_previous_response_id_is_a_400(flashpro: str, sim: RunningSimulator) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(flashpro).responses.create(
            model="auto", input="hi", previous_response_id="resp_does_not_exist"
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    assert not [r for r in sim.requests() if r.path.endswith("/chat/completions")]


def test_stored_responses_can_be_retrieved_unless_store_is_false(flashpro: str) -> None:
    api = client(flashpro)
    kept = api.responses.create(model="flash", input="Keep this.")
    assert api.responses.retrieve(kept.id).output_text == kept.output_text
    fleeting = api.responses.create(model="flash", input="Forget this.", store=False)
    assert fleeting.store is False
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(fleeting.id)
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model="flash", input="And?", previous_response_id=fleeting.id)


def test_callers_cannot_read_or_continue_each_others_responses(flashpro: str) -> None:
    mine = client(flashpro, "key-of-alice").responses.create(model="flash", input="secret")
    theirs = client(flashpro, "key-of-bob")
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.BadRequestError):
        theirs.responses.create(model="flash", input="and?", previous_response_id=mine.id)


@pytest.fixture
def locked(simulator: RunningSimulator, upstream_env: None, tmp_path: Path) -> Iterator[str]:
    with keyed_flashpro(simulator, tmp_path) as base:
        yield base


def test_a_locked_policy_needs_a_client_key(locked: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(locked, "stranger").responses.create(model="flash", input="hi")
    with pytest.raises(openai.AuthenticationError):
        client(locked, "stranger").responses.retrieve("resp_whatever")
    answer = client(locked, CLIENT_KEY).responses.create(model="flash", input="hi")
    assert client(locked, CLIENT_KEY).responses.retrieve(answer.id).id == answer.id


BAD_BODIES: list[tuple[bytes | dict[str, Any], int, str, str | None]] = [
    (b"{not json", 400, "invalid_request", None),
    ({"model": "auto"}, 400, "invalid_request", "input"),
    ({"model": "auto", "input": []}, 400, "invalid_request", "input"),
    ({"model": "auto", "input": [{"type": "web_search_call"}]}, 400, "invalid_request", "input"),
    ({"model": "auto", "input": [{"role": "user", "content": 5}]}, 400, "invalid_request", "input"),
    ({"model": "auto", "input": "x", "tools": [{"name": "f"}]}, 400, "invalid_request", "tools"),
    ({"model": "auto", "input": "x", "temperature": 9}, 400, "invalid_request", "temperature"),
    ({"model": "gpt-4o", "input": "x"}, 404, "model_not_found", None),
    ({"model": "auto", "input": "x" * 300_000}, 413, "request_too_large", None),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_BODIES)
def test_bad_requests_get_openai_errors(
    flashpro: str, body: bytes | dict[str, Any], status: int, code: str, param: str | None
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(flashpro + "/v1/responses", timeout=10, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert len(response.content) < 2048


def test_wrong_methods_are_405(flashpro: str) -> None:
    assert httpx.get(flashpro + "/v1/responses").status_code == 405
    response = httpx.delete(flashpro + "/v1/responses/resp_x")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_upstream_errors_keep_their_status(flashpro: str) -> None:
    for stream in (False, True):
        response = httpx.post(
            flashpro + "/v1/responses",
            json={"model": "flash", "input": "fail [[sim:status=500]]", "stream": stream},
            timeout=10,
        )
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_error"
        assert UPSTREAM_KEY not in response.text


def test_a_stream_cut_upstream_ends_with_error_and_failed_events(flashpro: str) -> None:
    with httpx.stream(
        "POST",
        flashpro + "/v1/responses",
        json={"model": "pro", "input": "drop [[sim:disconnect_after=3]]", "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_error"
    assert events[-1]["response"]["status"] == "failed"
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(events)))
    assert httpx.get(flashpro + "/healthz").status_code == 200


def test_previous_responses_are_shared_through_redis(
    simulator: RunningSimulator, upstream_env: None, redis_server: RedisServer
) -> None:
    settings = settings_for(simulator, redis_url=redis_server.url)
    with serve_app(settings, build_deps(settings)) as one:
        first = client(one).responses.create(model="flash", input="Remember me.")
    with serve_app(settings, build_deps(settings)) as other:  # another process, same Redis
        again = client(other).responses.create(
            model="flash", previous_response_id=first.id, input="Who?"
        )
        assert again.output_text
        assert client(other).responses.retrieve(first.id).output_text == first.output_text


def test_a_repeatable_request_is_served_from_the_cache(
    flashpro: str, sim: RunningSimulator
) -> None:
    api = client(flashpro, "key-of-carol")
    ask = {"model": "flash", "input": "Cache me: what is 2+2?", "temperature": 0}
    first = api.responses.with_raw_response.create(**ask)
    again = api.responses.with_raw_response.create(**ask)
    streamed = list(api.responses.create(**ask, stream=True))
    assert first.headers["x-flashpro-cache"] == "miss"
    assert again.headers["x-flashpro-cache"] == "hit"
    assert again.parse().output_text == first.parse().output_text
    assert again.parse().id != first.parse().id  # a new response, the same answer
    completed = streamed[-1].response
    assert completed.output_text == first.parse().output_text and completed.usage is not None
    assert len(chat_bodies(sim)) == 1  # one upstream call for the three


def disconnects(base: str) -> float:
    """Requests the metrics count as abandoned by their client."""
    lines = httpx.get(base + "/metrics").text.split("\n")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("flashpro_requests_total{") and 'error="client_disconnected"' in line
    )


def test_a_client_that_leaves_a_stream_is_counted_and_the_server_keeps_serving(
    flashpro: str,
) -> None:
    before = disconnects(flashpro)
    body = {"model": "pro", "input": "A long story [[sim:slow=50]]", "stream": True}
    with httpx.stream("POST", flashpro + "/v1/responses", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: response.created"
    wait_until(lambda: disconnects(flashpro) > before, timeout_s=5, what="the stream counted")
    assert client(flashpro).responses.create(model="flash", input="still here?").output_text


def test_hosted_tools_are_left_out_and_named(flashpro: str, sim: RunningSimulator) -> None:
    # Codex declares hosted tools beside its own in every request
    tools: list[Any] = [FUNCTION_TOOL, {"type": "web_search"}, {"type": "file_search"}]
    raw = client(flashpro).responses.with_raw_response.create(
        model="pro", input="Weather in Lima?", tools=tools
    )
    assert raw.headers["x-flashpro-ignored-tools"] == "file_search,web_search"
    assert [item.type for item in raw.parse().output][-1] == "function_call"
    sent = chat_bodies(sim)[-1]["tools"]
    assert [tool["function"]["name"] for tool in sent] == ["get_weather"]


def codex_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A request shaped as Codex sends one: every field it sets, whole history, no storage."""
    return {
        "model": "auto",
        "instructions": "You are a coding agent.",
        "input": items,
        "tools": [
            {**FUNCTION_TOOL, "strict": False},
            {"type": "custom", "name": "apply_patch", "description": "Edit files."},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0b4c6a44-session",
        "client_metadata": {"x-codex-turn": "1"},
    }


def test_a_codex_session_turn_streams_and_loops(flashpro: str, sim: RunningSimulator) -> None:
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Sandbox: read-only."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather in Kyoto?"}],
        },
    ]
    with httpx.stream(
        "POST", flashpro + "/v1/responses", json=codex_body(items), timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["x-flashpro-ignored-tools"] == "web_search"
        events = sse_events(response)
    completed = events[-1]["response"]
    assert events[-1]["type"] == "response.completed" and completed["store"] is False
    sent = chat_bodies(sim)[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "apply_patch"]
    call = next(item for item in completed["output"] if item["type"] == "function_call")
    items += [
        *completed["output"],
        {"type": "function_call_output", "call_id": call["call_id"], "output": "clear"},
    ]
    with httpx.stream(
        "POST", flashpro + "/v1/responses", json=codex_body(items), timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        events = sse_events(response)
    answer = events[-1]["response"]
    assert answer["status"] == "completed"
    assert [item["type"] for item in answer["output"]][-1] == "message"
    assert [m["role"] for m in chat_bodies(sim)[-1]["messages"]][-2:] == ["assistant", "tool"]


def test_route_explains_a_responses_body_as_its_chat_twin(
    flashpro: str, sim: RunningSimulator
) -> None:
    prompt = "Prove that there are infinitely many primes."
    chat = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    twin = httpx.post(flashpro + "/v1/route", json=chat, timeout=10).json()
    explained = httpx.post(
        flashpro + "/v1/route", json={"model": "auto", "input": prompt}, timeout=10
    ).json()
    assert explained["tier"] == twin["tier"] and explained["score"] == twin["score"]
    assert explained["prompt_tokens"] == twin["prompt_tokens"]
    unknown = {"model": "auto", "input": "x", "previous_response_id": "resp_nope"}
    refused = httpx.post(flashpro + "/v1/route", json=unknown, timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "previous_response_not_found"
    assert not [r for r in sim.requests() if r.path.endswith("/chat/completions")]


def responses_counted(base: str, status: str) -> float:
    lines = httpx.get(base + "/metrics").text.split("\n")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("flashpro_requests_total{")
        and 'api="responses"' in line
        and f'status="{status}"' in line
    )


def test_answers_and_refusals_are_counted_as_responses(flashpro: str) -> None:
    answered, refused = responses_counted(flashpro, "2xx"), responses_counted(flashpro, "4xx")
    client(flashpro).responses.create(model="flash", input="count me")
    list(client(flashpro).responses.create(model="flash", input="and me", stream=True))
    with pytest.raises(openai.BadRequestError):
        client(flashpro).responses.create(model="flash", input="x", previous_response_id="resp_0")
    assert responses_counted(flashpro, "2xx") == answered + 2
    assert responses_counted(flashpro, "4xx") == refused + 1
