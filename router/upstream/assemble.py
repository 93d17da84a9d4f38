"""Turn streamed chunks into one chat.completion body, and a body back into chunks. Pure."""

from __future__ import annotations

from typing import Any

from router.routing.cost import Usage


class StreamAssembler:
    """Accumulates OpenAI stream chunks (reasoning, content, tool calls) into one answer."""

    def __init__(self) -> None:
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if not self._meta:
            self._meta = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index", 0))
        state = self._choices.setdefault(
            index, {"reasoning": [], "content": [], "tools": {}, "finish_reason": None}
        )
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            state["reasoning"].append(delta["reasoning_content"])
        if delta.get("content"):
            state["content"].append(delta["content"])
        for call in delta.get("tool_calls") or ():
            slot = state["tools"].setdefault(
                int(call.get("index", 0)),
                {"id": None, "type": "function", "name": "", "arguments": []},
            )
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["name"] = function.get("name") or slot["name"]
            if function.get("arguments"):
                slot["arguments"].append(function["arguments"])
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self) -> bool:
        """Every choice ended with a finish reason (the stream completed normally)."""
        return bool(self._choices) and all(
            state["finish_reason"] for state in self._choices.values()
        )

    def reported_usage(self) -> Usage | None:
        """The usage the upstream reported for the whole answer, if it did."""
        return Usage.from_wire(self.usage) if self.usage else None

    def produced_chars(self) -> tuple[int, int]:
        """(characters streamed so far, of which reasoning): what a cut stream produced."""
        total = reasoning = 0
        for state in self._choices.values():
            thought = sum(len(part) for part in state["reasoning"])
            reasoning += thought
            total += thought + sum(len(part) for part in state["content"])
            total += sum(len(a) for slot in state["tools"].values() for a in slot["arguments"])
        return total, reasoning

    def finish_reasons(self) -> list[str | None]:
        return [state["finish_reason"] for state in self._choices.values()]

    def body(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(state["content"])}
            if state["reasoning"]:
                message["reasoning_content"] = "".join(state["reasoning"])
            if state["tools"]:
                message["tool_calls"] = [
                    {
                        "id": slot["id"],
                        "type": slot["type"],
                        "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])},
                    }
                    for _, slot in sorted(state["tools"].items())
                ]
            choices.append(
                {"index": index, "message": message, "finish_reason": state["finish_reason"]}
            )
        body: dict[str, Any] = {"object": "chat.completion", **self._meta, "choices": choices}
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def chunks_of(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """Replay a whole answer as stream chunks: reasoning first, then content and tool calls."""
    base: dict[str, Any] = {k: body[k] for k in ("id", "created", "model") if k in body}
    base["object"] = "chat.completion.chunk"
    out: list[dict[str, Any]] = []

    def emit(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "finish_reason": finish}
        out.append({**base, "choices": [choice]})

    for choice in body.get("choices") or ():
        index = int(choice.get("index", 0))
        message = choice.get("message") or {}
        emit(index, {"role": "assistant", "content": ""})
        if message.get("reasoning_content"):
            emit(index, {"reasoning_content": message["reasoning_content"]})
        if message.get("content"):
            emit(index, {"content": message["content"]})
        for position, call in enumerate(message.get("tool_calls") or ()):
            emit(index, {"tool_calls": [{"index": position, **call}]})
        emit(index, {}, choice.get("finish_reason") or "stop")
    if include_usage and body.get("usage"):
        out.append({**base, "choices": [], "usage": body["usage"]})
    return out
