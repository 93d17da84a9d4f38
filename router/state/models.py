"""The model store: which classifier is live for every flashpro process, the promoted artifacts,
their history (for rollback) and the evaluation that promoted each. Does I/O (Redis when
configured, else process memory).

With Redis (keys under `flashpro:v1:models:`): `live` holds the live version, `blob:<version>`
the artifact's bytes (`DifficultyClassifier.to_bytes`), `history` the promoted versions, newest
first, `report:<version>` the JSON evaluation that promoted it, and `lock` the promotion lock
(one `flashpro learn` at a time, with an expiry). No `live` key means no model
was promoted (or every promotion was rolled back): each process runs the classifier it started
with. `flashpro learn` writes here; every server process polls `live` (router/http/reload.py)
and swaps a changed model in. The last HISTORY promotions are kept, older blobs are deleted.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson

from router.state.store import PREFIX, Client, Store, connect

HISTORY = 20  # promoted versions kept (rollback goes back at most this far)
TIMEOUT_S = 5.0  # a blob is ~1 MB: longer than the request path's Redis deadline
_KEYS = f"{PREFIX}:models"

# Pop the newest promotion; the next one down becomes live, or none (the classifier each process
# started with). Atomic, so two rollbacks at once pop two versions, not one twice.
_ROLLBACK = """
local gone = redis.call('LPOP', KEYS[1])
if not gone then return false end
local now = redis.call('LINDEX', KEYS[1], 0)
if now then redis.call('SET', KEYS[2], now) else redis.call('DEL', KEYS[2]) end
return {gone, now or ''}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ModelStore(Protocol):
    """The live classifier version and the promoted artifacts (module docstring). Redis
    failures raise `StoreDown` (router/state/store.py)."""

    async def live(self) -> str | None:
        """The promoted version every process should run; None: none promoted."""
        ...

    async def blob(self, version: str) -> bytes | None: ...

    async def report(self, version: str) -> dict[str, Any] | None: ...

    async def history(self) -> list[str]:
        """Promoted versions, newest (live) first."""
        ...

    async def promote(self, version: str, data: bytes, report: dict[str, Any]) -> None:
        """Store the artifact and its report, and make it live."""
        ...

    async def rollback(self) -> tuple[str, str | None] | None:
        """Take back the newest promotion: (the version taken back, the version now live or
        None for the one each process started with); None when nothing was promoted."""
        ...

    async def claim(self, owner: str, seconds: float) -> bool:
        """Take the promotion lock for up to `seconds` (one `flashpro learn` promotes or rolls
        back at a time); False while another owner holds it."""
        ...

    async def release(self, owner: str) -> None:
        """Give the lock back, if `owner` still holds it."""
        ...

    async def aclose(self) -> None: ...


class MemoryModelStore:
    """The model store in this process's memory (no Redis): promotions made in this process."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        self._history: list[str] = []
        self._owner: str | None = None

    async def live(self) -> str | None:
        return self._history[0] if self._history else None

    async def blob(self, version: str) -> bytes | None:
        return self._blobs.get(version)

    async def report(self, version: str) -> dict[str, Any] | None:
        return self._reports.get(version)

    async def history(self) -> list[str]:
        return list(self._history)

    async def promote(self, version: str, data: bytes, report: dict[str, Any]) -> None:
        self._blobs[version] = data
        self._reports[version] = report
        self._history = [version, *(v for v in self._history if v != version)]
        for old in self._history[HISTORY:]:
            self._blobs.pop(old, None)
            self._reports.pop(old, None)
        del self._history[HISTORY:]

    async def rollback(self) -> tuple[str, str | None] | None:
        if not self._history:
            return None
        gone = self._history.pop(0)
        return gone, (self._history[0] if self._history else None)

    async def claim(self, owner: str, seconds: float) -> bool:
        if self._owner not in (None, owner):
            return False
        self._owner = owner
        return True

    async def release(self, owner: str) -> None:
        if self._owner == owner:
            self._owner = None

    async def aclose(self) -> None:
        return None


class RedisModelStore:
    """The model store in Redis, shared by every flashpro process and `flashpro learn`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def _get(self, key: str) -> bytes | None:
        async def read(client: Client) -> bytes | str | None:
            return await client.get(f"{_KEYS}:{key}")

        value = await self._store.call(read)
        return value.encode() if isinstance(value, str) else value

    async def live(self) -> str | None:
        value = await self._get("live")
        return value.decode() if value else None

    async def blob(self, version: str) -> bytes | None:
        return await self._get(f"blob:{version}")

    async def report(self, version: str) -> dict[str, Any] | None:
        raw = await self._get(f"report:{version}")
        try:
            report = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return None
        return report if isinstance(report, dict) else None

    async def history(self) -> list[str]:
        async def read(client: Client) -> list[bytes | str]:
            return list(await client.lrange(f"{_KEYS}:history", 0, -1))

        return [_text(v) for v in await self._store.call(read)]

    async def promote(self, version: str, data: bytes, report: dict[str, Any]) -> None:
        async def write(client: Client) -> list[bytes | str]:
            history = f"{_KEYS}:history"
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(f"{_KEYS}:blob:{version}", data)
                pipe.set(f"{_KEYS}:report:{version}", orjson.dumps(report))
                pipe.lrem(history, 0, version)
                pipe.lpush(history, version)
                pipe.lrange(history, HISTORY, -1)
                pipe.ltrim(history, 0, HISTORY - 1)
                pipe.set(f"{_KEYS}:live", version)
                results = await pipe.execute()
            return list(results[4])

        dropped = {_text(v) for v in await self._store.call(write)} - {version}
        if dropped:

            async def forget(client: Client) -> None:
                blobs = [f"{_KEYS}:blob:{v}" for v in dropped]
                await client.delete(*blobs, *(f"{_KEYS}:report:{v}" for v in dropped))

            await self._store.call(forget)

    async def rollback(self) -> tuple[str, str | None] | None:
        async def pop(client: Client) -> list[bytes | str] | None:
            keys = (f"{_KEYS}:history", f"{_KEYS}:live")
            result = await client.eval(_ROLLBACK, 2, *keys)
            return list(result) if result else None

        popped = await self._store.call(pop)
        if popped is None:
            return None
        gone, now = (_text(v) for v in popped)
        return gone, now or None

    async def claim(self, owner: str, seconds: float) -> bool:
        async def take(client: Client) -> bool:
            return bool(await client.set(f"{_KEYS}:lock", owner, nx=True, ex=max(1, int(seconds))))

        return await self._store.call(take)

    async def release(self, owner: str) -> None:
        async def give(client: Client) -> None:
            await client.eval(_RELEASE, 1, f"{_KEYS}:lock", owner)

        await self._store.call(give)

    async def aclose(self) -> None:
        await self._store.aclose()


def _figure(value: Any) -> float | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number else None


def promotion(report: dict[str, Any] | None) -> dict[str, Any]:
    """What /v1/stats shows of a promotion's report: when, from which version, and the held-out
    figures before and after (None where the report does not say)."""
    report = report or {}
    current, candidate = report.get("current"), report.get("candidate")
    current = current if isinstance(current, dict) else {}
    candidate = candidate if isinstance(candidate, dict) else {}
    previous = report.get("previous")
    heldout = _figure(current.get("heldout_n"))
    return {
        "promoted_at": _figure(report.get("promoted_at")),
        "previous": previous if isinstance(previous, str) else None,
        "heldout_n": None if heldout is None else int(heldout),
        "apgr_before": _figure(current.get("apgr")),
        "apgr_after": _figure(candidate.get("apgr")),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_models(url: str | None) -> ModelStore:
    """The model store for REDIS_URL (its own connection, with a deadline for ~1 MB blobs, so a
    slow read never trips the request path's breaker), or process memory without one."""
    if not url:
        return MemoryModelStore()
    return RedisModelStore(Store(connect(url, TIMEOUT_S), logging.getLogger("flashpro.models")))
