"""Stored responses: what a `previous_response_id` continues and `GET /v1/responses/{id}` returns.
Does I/O (Redis when configured, else process memory).

Each stored response keeps the whole conversation that produced it, as Responses input items
(earlier turns, its input, its output), so continuing one is a single read. Entries live in the
caller's namespace (its tenant, else a hash of its key: see `namespace_of`), so one caller can
neither read nor continue another's responses; they expire after a TTL, and an entry over the
size bound is not kept (continuing it then reads as unknown). A Redis outage reads as unknown
too: the store rides the cache's backend, whose failures are misses.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from router.state.cache import Cache, MemoryCache, RedisCache

log = logging.getLogger("flashpro")

_PREFIX = "flashpro:responses:v1"
DEFAULT_TTL_S = 30 * 86_400  # OpenAI keeps stored responses for 30 days
DEFAULT_MAX_ENTRY_BYTES = 8 * 1_048_576


def new_response_id() -> str:
    """A fresh, unguessable response id (`resp_` and 48 hex digits)."""
    return "resp_" + secrets.token_hex(24)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as returned, and the conversation up to and including it."""

    response: dict[str, Any]
    items: list[dict[str, Any]]

    def dumps(self) -> bytes:
        return orjson.dumps({"response": self.response, "items": self.items})

    @classmethod
    def loads(cls, raw: bytes) -> StoredResponse | None:
        """The entry, or None for a record this version cannot read."""
        try:
            data = orjson.loads(raw)
            stored = cls(data["response"], data["items"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(stored.response, dict) or not isinstance(stored.items, list):
            return None
        return stored


class ResponseStore:
    """Stored responses by caller namespace and id, over a cache backend."""

    def __init__(
        self,
        backend: Cache,
        ttl_s: float = DEFAULT_TTL_S,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes

    @classmethod
    def in_memory(
        cls,
        ttl_s: float = DEFAULT_TTL_S,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1_048_576,
    ) -> ResponseStore:
        return cls(MemoryCache(max_entries, max_bytes), ttl_s, max_entry_bytes)

    @staticmethod
    def key(namespace: str, response_id: str) -> str:
        digest = hashlib.sha256(f"{namespace}\0{response_id}".encode()).hexdigest()[:40]
        return f"{_PREFIX}:{digest}"

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        raw = (await self.backend.get_many([self.key(namespace, response_id)]))[0]
        return None if raw is None else StoredResponse.loads(raw)

    async def put(self, namespace: str, stored: StoredResponse) -> bool:
        """Keep a response; False (and nothing kept) when it is over the size bound."""
        raw = stored.dumps()
        if len(raw) > self.max_entry_bytes:
            log.warning(
                "response %s not stored: %d bytes, over the %d-byte bound",
                stored.response.get("id"),
                len(raw),
                self.max_entry_bytes,
            )
            return False
        await self.backend.put(self.key(namespace, str(stored.response["id"])), raw, self.ttl_s)
        return True

    async def aclose(self) -> None:
        await self.backend.aclose()


def open_response_store(
    redis_url: str | None,
    ttl_s: float = DEFAULT_TTL_S,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    memory_max_bytes: int = 256 * 1_048_576,
) -> ResponseStore:
    """Redis when a URL is configured (every flashpro process sees every response), else this
    process's memory, bounded by `memory_max_bytes` (least recently used out first)."""
    if redis_url:
        return ResponseStore(RedisCache(redis_url, timeout_s=0.25), ttl_s, max_entry_bytes)
    return ResponseStore.in_memory(ttl_s, max_entry_bytes, max_bytes=memory_max_bytes)
