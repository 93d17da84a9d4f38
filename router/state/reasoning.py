"""Remember the reasoning behind tool calls so later turns can send it back: in process, or in
Redis for every flashpro process. Does I/O (Redis).

DeepSeek answers 400 when an assistant turn that made tool calls comes back without its
`reasoning_content` (thinking mode), and many OpenAI clients drop that field when they echo the
conversation. flashpro keeps the reasoning per caller namespace and tool-call id and restores it
into the turns that lack it. With `REDIS_URL` every process shares it (a client's next turn may
reach another worker); each process also keeps a bounded copy of what it saw.

When it is missing (never seen, expired after `ttl_s`, evicted, or Redis down and another
process saw it), the transport sends DeepSeek a one-space placeholder, as litellm does: DeepSeek
accepts the turn, but the model continues without its earlier reasoning, which can cost quality.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from router.schemas import Message
from router.state.store import PREFIX, Client, Store, StoreDown, open_store

DAY_S = 86_400


class ReasoningStore(Protocol):
    async def remember(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Keep the reasoning of every tool-calling choice of an answer."""
        ...

    async def restore(self, namespace: str, messages: Sequence[Message]) -> list[Message]:
        """Messages with the missing reasoning of earlier tool-call turns put back."""
        ...

    async def aclose(self) -> None: ...


def calls_with_reasoning(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(tool-call id, reasoning) for every tool call of an answer that came with reasoning."""
    out: list[tuple[str, str]] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content")
        if reasoning:
            out += [(c["id"], reasoning) for c in message.get("tool_calls") or () if c.get("id")]
    return out


def _needing(messages: Sequence[Message]) -> list[Message]:
    return [
        m for m in messages if m.role == "assistant" and m.tool_calls and not m.reasoning_content
    ]


def _filled(messages: Sequence[Message], known: Mapping[str, str]) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls and not message.reasoning_content:
            found = next((known[c.id] for c in message.tool_calls if c.id in known), None)
            if found is not None:
                message = message.model_copy(update={"reasoning_content": found})
        out.append(message)
    return out


def _slot(namespace: str, call_id: str) -> str:
    """Where one tool call's reasoning is kept: per caller, so no caller can name another's."""
    return hashlib.sha256(f"{namespace}\0{call_id}".encode()).hexdigest()[:40]


class ReasoningMemory:
    """This process's memory: bounded, least recently used out first."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    def keep(self, slot: str, reasoning: str) -> None:
        self._entries[slot] = reasoning
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def get(self, slot: str) -> str | None:
        return self._entries.get(slot)

    async def remember(self, namespace: str, body: Mapping[str, Any]) -> None:
        for call_id, reasoning in calls_with_reasoning(body):
            self.keep(_slot(namespace, call_id), reasoning)

    async def restore(self, namespace: str, messages: Sequence[Message]) -> list[Message]:
        known = {
            c.id: found
            for m in _needing(messages)
            for c in m.tool_calls or ()
            if (found := self.get(_slot(namespace, c.id))) is not None
        }
        return _filled(messages, known) if known else list(messages)

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RedisReasoningMemory:
    """Reasoning in Redis (shared by every process, kept `ttl_s`), with this process's memory
    as a near copy and as the fallback while Redis is down."""

    def __init__(self, store: Store, ttl_s: int = DAY_S) -> None:
        self._store = store  # its breaker skips a failing Redis (router/state/store.py)
        self._ttl_s = ttl_s
        self._near = ReasoningMemory()

    @staticmethod
    def _key(slot: str) -> str:
        return f"{PREFIX}:reasoning:{slot}"

    async def remember(self, namespace: str, body: Mapping[str, Any]) -> None:
        found = calls_with_reasoning(body)
        if not found:
            return
        slots = [(_slot(namespace, call_id), reasoning) for call_id, reasoning in found]
        for slot, reasoning in slots:
            self._near.keep(slot, reasoning)

        async def write(client: Client) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for slot, reasoning in slots:
                    pipe.set(self._key(slot), reasoning, ex=self._ttl_s)
                await pipe.execute()

        try:
            await self._store.call(write)
        except StoreDown:
            return

    async def restore(self, namespace: str, messages: Sequence[Message]) -> list[Message]:
        wanted = {
            c.id: _slot(namespace, c.id) for m in _needing(messages) for c in m.tool_calls or ()
        }
        if not wanted:
            return list(messages)
        known = {cid: r for cid, slot in wanted.items() if (r := self._near.get(slot)) is not None}
        missing = [cid for cid in wanted if cid not in known]
        if missing:
            keys = [self._key(wanted[cid]) for cid in missing]
            try:
                values = await self._store.call(lambda client: client.mget(keys))
            except StoreDown:
                values = [None] * len(missing)
            for cid, value in zip(missing, values, strict=True):
                if value is not None:
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    known[cid] = text
                    self._near.keep(wanted[cid], text)
        return _filled(messages, known) if known else list(messages)

    async def aclose(self) -> None:
        await self._store.aclose()


def open_reasoning(redis: str | Store | None) -> ReasoningStore:
    """Redis-backed when Redis is configured (a URL, or the store the other shared state
    uses), else this process's memory."""
    shared = open_store(redis) if isinstance(redis, str) else redis
    return RedisReasoningMemory(shared) if shared is not None else ReasoningMemory()
