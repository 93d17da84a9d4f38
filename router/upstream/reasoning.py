"""Remember the reasoning behind tool calls so later turns can send it back. In-memory, no I/O.

DeepSeek answers 400 when an assistant turn that made tool calls comes back without its
`reasoning_content`, and many OpenAI clients drop that field when they echo the conversation.
flashpro keeps it per tool-call id (bounded, least recently used out first) and restores it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from router.schemas import Message


class ReasoningMemory:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    def remember(self, body: dict[str, Any]) -> None:
        """Keep the reasoning of every tool-calling choice of an answer."""
        for choice in body.get("choices") or ():
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content")
            if not reasoning:
                continue
            for call in message.get("tool_calls") or ():
                if call.get("id"):
                    self._entries[call["id"]] = reasoning
                    self._entries.move_to_end(call["id"])
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def restore(self, messages: list[Message]) -> list[Message]:
        """Messages with the missing reasoning of earlier tool-call turns put back."""
        out: list[Message] = []
        for message in messages:
            if message.role == "assistant" and message.tool_calls and not message.reasoning_content:
                known = next(
                    (self._entries[c.id] for c in message.tool_calls if c.id in self._entries),
                    None,
                )
                if known is not None:
                    message = message.model_copy(update={"reasoning_content": known})
            out.append(message)
        return out

    def __len__(self) -> int:
        return len(self._entries)
