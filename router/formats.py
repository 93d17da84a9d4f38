"""The wire formats the pipeline relays, and how each one's answers are read: assembled from a
stream, replayed from the cache, counted and judged complete. Pure.

Chat completions (and the Responses door, translated to them) relay OpenAI-format answers;
the Messages door relays Anthropic-format ones. The pipeline asks `format_of(routed)` and never
looks inside an answer itself.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from router.routing.cost import Usage
from router.routing.routed import Routed
from router.state.cache import is_complete
from router.upstream import messages
from router.upstream.assemble import StreamAssembler, chunks_of


class Assembler(Protocol):
    """Builds the whole answer from a stream's events as they pass."""

    @property
    def finished(self) -> bool:
        """The stream ended normally (not cut by a client or an upstream failure)."""
        ...

    def add(self, data: dict[str, Any]) -> None: ...

    def body(self) -> dict[str, Any]: ...

    def produced_chars(self) -> tuple[int, int]:
        """(characters streamed so far, of which reasoning)."""
        ...

    def reported_usage(self) -> Usage | None:
        """The upstream's own count of the answer, if it sent one."""
        ...


class WireFormat(Protocol):
    def assembler(self) -> Assembler: ...

    def fresh(self, body: dict[str, Any]) -> dict[str, Any]:
        """A stored answer as a new one: its own id (and time), as every answer from the
        upstream has (clients key logs and deduplication on the id)."""
        ...

    def replay(self, body: dict[str, Any], routed: Routed) -> list[dict[str, Any]]:
        """A whole answer as the stream events of it."""
        ...

    def usage(self, body: dict[str, Any]) -> Usage: ...

    def complete(self, body: dict[str, Any]) -> bool:
        """The answer ended normally: worth caching."""
        ...

    def for_client(self, data: dict[str, Any], routed: Routed) -> dict[str, Any] | None:
        """A stream event as the client gets it (None: not sent)."""
        ...


@dataclass(frozen=True)
class ChatFormat:
    """OpenAI chat completions: chunks with choices, usage only if the client asked."""

    def assembler(self) -> Assembler:
        return StreamAssembler()

    def fresh(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}

    def replay(self, body: dict[str, Any], routed: Routed) -> list[dict[str, Any]]:
        return chunks_of(body, routed.request.include_usage())

    def usage(self, body: dict[str, Any]) -> Usage:
        return Usage.from_wire(body.get("usage"))

    def complete(self, body: dict[str, Any]) -> bool:
        return is_complete(body)

    def for_client(self, data: dict[str, Any], routed: Routed) -> dict[str, Any] | None:
        if routed.request.include_usage():
            return data
        if not data.get("choices"):
            return None  # a usage-only chunk the client did not ask for
        if "usage" in data:
            return {k: v for k, v in data.items() if k != "usage"}
        return data


@dataclass(frozen=True)
class MessagesFormat:
    """Anthropic messages: content blocks, every event relayed as DeepSeek sent it."""

    def assembler(self) -> Assembler:
        return messages.MessageAssembler()

    def fresh(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "id": f"msg_{uuid.uuid4().hex[:24]}"}

    def replay(self, body: dict[str, Any], routed: Routed) -> list[dict[str, Any]]:
        return messages.events_of(body)

    def usage(self, body: dict[str, Any]) -> Usage:
        return messages.usage_of(body.get("usage"))

    def complete(self, body: dict[str, Any]) -> bool:
        return messages.is_complete(body)

    def for_client(self, data: dict[str, Any], routed: Routed) -> dict[str, Any] | None:
        return data


CHAT = ChatFormat()
MESSAGES = MessagesFormat()


def format_of(routed: Routed) -> WireFormat:
    return MESSAGES if routed.anthropic is not None else CHAT
