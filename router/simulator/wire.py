"""Shape the simulated DeepSeek's answers as its wire format: JSON bodies and SSE events. Pure."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator, Sequence

import orjson

from router.simulator.text import CHARS_PER_TOKEN, ChatRequest, Choice, count_tokens


def completion_json(request: ChatRequest, choices: Sequence[Choice], usage: object) -> bytes:
    """A non-streaming `chat.completion` body."""
    body = _head(request.model, "chat.completion")
    body["choices"] = [_choice_json(i, c) for i, c in enumerate(choices)]
    body["usage"] = usage
    return orjson.dumps(body)


def stream_events(
    request: ChatRequest, choices: Sequence[Choice], usage: object, chunk_tokens: int
) -> Iterator[tuple[bytes, int]]:
    """(SSE event, tokens it carries) for all choices, interleaved as OpenAI does; no [DONE]."""
    # The envelope is the same for every chunk: serialise it once, splice each choice in.
    head = orjson.dumps(_head(request.model, "chat.completion.chunk"))[:-1] + b',"choices":['
    per_choice = [_deltas(i, c, chunk_tokens * CHARS_PER_TOKEN) for i, c in enumerate(choices)]
    for step in itertools.zip_longest(*per_choice):
        for choice, tokens in filter(None, step):
            yield b"data: " + head + orjson.dumps(choice) + b"]}\n\n", tokens
    if request.include_usage:
        yield b"data: " + head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n", 0


def usage_json(prompt_tokens: int, hit: int, choices: Sequence[Choice]) -> dict[str, object]:
    completion = sum(c.completion_tokens() for c in choices)
    reasoning = sum(c.reasoning_tokens() for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": hit},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": prompt_tokens - hit,
    }


def _head(model: str, kind: str) -> dict[str, object]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_flashpro_sim",
    }


def _choice_json(index: int, choice: Choice) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": choice.content}
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    if (call := choice.tool_call) is not None:
        function = {"name": call.name, "arguments": call.arguments}
        message["tool_calls"] = [{"id": call.id, "type": "function", "function": function}]
    finish = choice.finish_reason
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def _deltas(index: int, choice: Choice, size: int) -> Iterator[tuple[dict[str, object], int]]:
    """One choice as stream deltas: reasoning, then content or a tool call, then the finish."""
    pieces: list[tuple[dict[str, object], str]] = []  # (delta, the text it carries)
    for key, text in (("reasoning_content", choice.reasoning or ""), ("content", choice.content)):
        pieces += (
            ({key: text[i : i + size]}, text[i : i + size]) for i in range(0, len(text), size)
        )
    if (call := choice.tool_call) is not None:
        start = {"index": 0, "id": call.id, "type": "function"}
        pieces.append(({"tool_calls": [{**start, "function": {"name": call.name}}]}, call.name))
        for i in range(0, len(call.arguments), size):
            part = call.arguments[i : i + size]
            pieces.append(({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, part))
    pieces = pieces or [({"content": ""}, "")]
    pieces[0] = ({"role": "assistant", **pieces[0][0]}, pieces[0][1])
    for delta, text in pieces:
        chunk = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        yield chunk, count_tokens(text)
    yield {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}, 0
