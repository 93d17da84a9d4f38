"""Who sends a request: the caller's key digest and limits asked for. Pure: no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def key_digest(token: str) -> str:
    """What a policy's `keys:` holds for a client key: its sha256 hex digest."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_digest(authorization: str | None) -> str | None:
    """The digest of an `Authorization: Bearer <key>` header's key; None without one.

    Not memoised: a cache keyed by raw header values would let unauthenticated callers hold
    memory with made-up keys. Hashing a key costs about a microsecond, and the server caps
    request heads (router/http/server.py), so no header is large."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return key_digest(token)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request, and what it asks of the limits. Pure data, built by `caller_of`."""

    key: str | None = None  # sha256 hex of the bearer token
    group: str | None = None
    conversation: str | None = None  # identifies a multi-turn conversation
    max_latency_ms: float | None = None
    max_tokens: int | None = None
