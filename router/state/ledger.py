"""The spend ledger: spend and in-flight holds per budget scope per UTC day and month, in process
or in Redis (shared by every flashpro process). Does I/O (Redis).

Admission holds an answer's expected cost against its scopes (`reserve`): in Redis a Lua script
checks every scope's spend plus the holds in flight and records the hold in one atomic step, so
concurrent processes cannot all take the last of a budget. The answer's real cost replaces the
hold when it is charged (`settle`); a failed request gives it back (`release`); a hold nobody
settles lapses. A budget is then overshot by the estimation error, not by everything in flight.

While Redis is unreachable (router/state/store.py's breaker), each process works from its own
view: the spend it last read plus what it recorded since. What it records meanwhile is kept as
pending batches and applied to Redis as soon as a call succeeds again; every batch carries a
token that Redis remembers for an hour, so a batch whose first attempt did reach Redis (a
stopped Redis runs the commands queued on its sockets when it resumes) is not counted twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from router.routing.budget import Hold
from router.routing.limits import BudgetLimit
from router.state.store import PREFIX, Client, Store, StoreDown

Amounts = list[tuple[float, float]]  # (day, month) USD per scope, holds included
Claim = tuple[str, BudgetLimit]  # a budget scope and its limits

_DAY_S = 2 * 86_400  # a day key outlives its day, so late readers near midnight still see it
_MONTH_S = 32 * 86_400
_APPLIED_S = 3_600  # how long Redis remembers an applied batch's token
_SEEN_MAX = 10_000  # spend keys whose last value a process remembers for an outage


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month a moment falls in, as ledger key suffixes."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%Y%m")


def over(limit: BudgetLimit, day: float, month: float) -> bool:
    """Whether `day`/`month` spending (holds included) has reached a limit."""
    return (limit.usd_per_day is not None and day >= limit.usd_per_day) or (
        limit.usd_per_month is not None and month >= limit.usd_per_month
    )


class Ledger(Protocol):
    """Spend and in-flight holds per scope per UTC day and month."""

    @property
    def shared(self) -> bool:
        """Whether the last answers came from the shared ledger (False: this process's view)."""
        ...

    async def spent(self, scopes: Sequence[str], now: float) -> Amounts: ...

    async def reserve(
        self, claims: Sequence[Claim], hold: Hold, now: float, check: bool
    ) -> Amounts | None:
        """Hold `hold.usd` against every scope; None once held. With `check`, refuse instead
        when a scope's spend plus holds has reached a limit, returning what was seen."""
        ...

    async def settle(self, hold: Hold, usd: float, now: float) -> None:
        """Replace the hold with the answer's real cost."""
        ...

    async def release(self, hold: Hold, now: float) -> None: ...

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        """Spend without a hold."""
        ...

    async def aclose(self) -> None: ...


class MemoryLedger:
    """This process's spend and holds (no Redis)."""

    shared = True

    def __init__(self) -> None:
        self._usd: dict[tuple[str, str], float] = {}
        self._holds: dict[str, Hold] = {}

    def _held(self, scope: str, now: float) -> float:
        return sum(h.usd for h in self._holds.values() if scope in h.scopes and h.expires_at > now)

    async def spent(self, scopes: Sequence[str], now: float) -> Amounts:
        day, month = periods(now)
        out: Amounts = []
        for scope in scopes:
            held = self._held(scope, now)
            out.append(
                (
                    self._usd.get((scope, day), 0.0) + held,
                    self._usd.get((scope, month), 0.0) + held,
                )
            )
        return out

    async def reserve(
        self, claims: Sequence[Claim], hold: Hold, now: float, check: bool
    ) -> Amounts | None:
        self._holds = {t: h for t, h in self._holds.items() if h.expires_at > now}
        seen = await self.spent([scope for scope, _ in claims], now)
        if check and any(over(limit, *s) for (_, limit), s in zip(claims, seen, strict=True)):
            return seen
        self._holds[hold.token] = hold
        return None

    async def settle(self, hold: Hold, usd: float, now: float) -> None:
        self._holds.pop(hold.token, None)
        await self.add(hold.scopes, usd, now)

    async def release(self, hold: Hold, now: float) -> None:
        self._holds.pop(hold.token, None)

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        for scope in scopes:
            for period in periods(now):
                self._usd[(scope, period)] = self._usd.get((scope, period), 0.0) + usd

    async def aclose(self) -> None:
        return None


# KEYS: per scope its day, month and holds keys. ARGV: now (ms), token, usd, expires (ms),
# check (1/0), the holds' TTL (s), then per scope its day and month limits ('' = none).
# Returns the scope that refused (0: held) and each scope's day and month, holds included.
_RESERVE = """
local now, n, refused, seen = tonumber(ARGV[1]), #KEYS / 3, 0, {}
for i = 1, n do
  local holds, held = KEYS[3 * i], 0
  local all = redis.call('HGETALL', holds)
  for j = 1, #all, 2 do
    local expires, amount = string.match(all[j + 1], '^([^:]+):(.+)$')
    if tonumber(expires) <= now then redis.call('HDEL', holds, all[j])
    else held = held + tonumber(amount) end
  end
  local day = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0') + held
  local month = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0') + held
  seen[2 * i - 1], seen[2 * i] = tostring(day), tostring(month)
  local day_limit, month_limit = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  if ARGV[5] == '1' and refused == 0 and ((day_limit and day >= day_limit)
      or (month_limit and month >= month_limit)) then refused = i end
end
if refused == 0 then
  for i = 1, n do
    redis.call('HSET', KEYS[3 * i], ARGV[2], ARGV[4] .. ':' .. ARGV[3])
    redis.call('EXPIRE', KEYS[3 * i], ARGV[6])
  end
end
table.insert(seen, 1, refused)
return seen
"""

# KEYS: the batch's token marker, its n spend keys, then the holds keys to drop from.
# ARGV: the marker's TTL, n, per spend key its USD and TTL, then per holds key the hold token.
# A batch whose marker exists was applied before: it is skipped.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local n = tonumber(ARGV[2])
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[1 + i], ARGV[1 + 2 * i])
  redis.call('EXPIRE', KEYS[1 + i], ARGV[2 + 2 * i])
end
for j = n + 2, #KEYS do redis.call('HDEL', KEYS[j], ARGV[2 + 2 * n + j - n - 1]) end
return 1
"""


@dataclass
class Batch:
    """Spend to add and holds to drop in Redis, applied at most once (by `token`)."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    usd: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (USD, TTL s)
    drops: list[tuple[str, str]] = field(default_factory=list)  # (holds key, hold token)

    def spend(self, key: str, usd: float, ttl_s: int) -> None:
        self.usd[key] = (self.usd.get(key, (0.0, ttl_s))[0] + usd, ttl_s)

    def merge(self, other: Batch) -> None:
        for key, (usd, ttl_s) in other.usd.items():
            self.spend(key, usd, ttl_s)
        self.drops += other.drops

    def __bool__(self) -> bool:
        return bool(self.usd or self.drops)


class RedisLedger:
    """The ledger in Redis, with this process's view while Redis is unreachable."""

    def __init__(
        self, store: Store, log: logging.Logger | None = None, namespace: str = ""
    ) -> None:
        # spend is kept per upstream set: a simulated flashpro never charges a real one's budget
        self._prefix = f"{PREFIX}:spend:{namespace}" if namespace else f"{PREFIX}:spend"
        self._store = store
        self._log = log or logging.getLogger("flashpro.store")
        self._reserve = store.client.register_script(_RESERVE)
        self._apply = store.client.register_script(_APPLY)
        # spend key -> the last value read (holds included), plus what was recorded since
        self._seen: dict[str, float] = {}
        self._pending = Batch()  # recorded while Redis was skipped
        self._unsure: list[Batch] = []  # sent but unanswered, or waiting for a retry
        self._local: dict[str, Hold] = {}  # holds made while Redis was unreachable
        self._reconciling = False

    @property
    def shared(self) -> bool:
        return self._store.up

    def _keys(self, scope: str, now: float) -> tuple[str, str, str]:
        """The scope's day and month spend keys, and its holds key."""
        day, month = periods(now)
        base = f"{self._prefix}:{scope}"
        return f"{base}:d:{day}", f"{base}:m:{month}", f"{base}:holds"

    async def spent(self, scopes: Sequence[str], now: float) -> Amounts:
        await self._reconcile()
        keys = [self._keys(scope, now) for scope in scopes]

        async def read(client: Client) -> tuple[list[Any], list[list[Any]]]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.mget([key for day, month, _ in keys for key in (day, month)])
                for _, _, holds_key in keys:
                    pipe.hvals(holds_key)
                values, *holds = await pipe.execute()
            return values, holds

        try:
            values, holds = await self._store.call(read)
        except StoreDown:
            return self._view(scopes, now)
        out: Amounts = []
        for i, (scope, (day, month, _)) in enumerate(zip(scopes, keys, strict=True)):
            held = sum(_live_amount(raw, now) for raw in holds[i])
            spent = (_usd(values[2 * i]) + held, _usd(values[2 * i + 1]) + held)
            self._remember(day, spent[0])
            self._remember(month, spent[1])
            here = self._local_held(scope, now)  # holds made during an outage, still open
            out.append((spent[0] + here, spent[1] + here))
        return out

    async def reserve(
        self, claims: Sequence[Claim], hold: Hold, now: float, check: bool
    ) -> Amounts | None:
        await self._reconcile()
        keys = [key for scope, _ in claims for key in self._keys(scope, now)]
        args: list[str | float | int] = [
            int(now * 1000),
            hold.token,
            hold.usd,
            int(hold.expires_at * 1000),
            int(check),
            int(max(hold.expires_at - now, 1)) + 60,
        ]
        for _, limit in claims:
            args += [_limit(limit.usd_per_day), _limit(limit.usd_per_month)]
        try:
            reply = await self._store.call(lambda client: self._reserve(keys, args, client))
        except StoreDown:
            return self._reserve_here(claims, hold, now, check)
        refused, *values = reply
        seen = [(float(values[2 * i]), float(values[2 * i + 1])) for i in range(len(claims))]
        for (scope, _), (day, month) in zip(claims, seen, strict=True):
            day_key, month_key, _ = self._keys(scope, now)
            self._remember(day_key, day if refused else day + hold.usd)
            self._remember(month_key, month if refused else month + hold.usd)
        return seen if int(refused) else None

    def _reserve_here(
        self, claims: Sequence[Claim], hold: Hold, now: float, check: bool
    ) -> Amounts | None:
        """A hold against this process's view, kept here (Redis is unreachable)."""
        seen = self._view([scope for scope, _ in claims], now)
        if check and any(over(limit, *s) for (_, limit), s in zip(claims, seen, strict=True)):
            return seen
        self._local = {t: h for t, h in self._local.items() if h.expires_at > now}
        self._local[hold.token] = hold
        return None

    async def settle(self, hold: Hold, usd: float, now: float) -> None:
        if self._local.pop(hold.token, None) is not None:  # made here: Redis never saw it
            self._record(hold.scopes, usd, now)
            return
        batch = Batch(token=hold.token)
        for scope in hold.scopes:
            day, month, holds = self._keys(scope, now)
            batch.spend(day, usd, _DAY_S)
            batch.spend(month, usd, _MONTH_S)
            batch.drops.append((holds, hold.token))
        await self._send(batch, {key: usd - hold.usd for key in batch.usd})

    async def release(self, hold: Hold, now: float) -> None:
        if self._local.pop(hold.token, None) is not None:
            return
        batch = Batch(token=f"{hold.token}:release")
        views: dict[str, float] = {}
        for scope in hold.scopes:
            day, month, holds = self._keys(scope, now)
            batch.drops.append((holds, hold.token))
            views.update({day: -hold.usd, month: -hold.usd})
        await self._send(batch, views)

    async def add(self, scopes: Sequence[str], usd: float, now: float) -> None:
        batch = Batch()
        for scope in scopes:
            day, month, _ = self._keys(scope, now)
            batch.spend(day, usd, _DAY_S)
            batch.spend(month, usd, _MONTH_S)
        await self._send(batch, {key: usd for key in batch.usd})

    async def _send(self, batch: Batch, views: dict[str, float]) -> None:
        """Apply a batch now, or keep it for when Redis is back (`views`: how it changes this
        process's view meanwhile)."""
        try:
            await self._store.call(lambda client: self._run_apply(batch, client))
            return
        except StoreDown as down:
            if down.attempted:  # it may have been applied: retried under its own token
                self._unsure.append(batch)
            else:
                self._pending.merge(batch)
        for key, usd in views.items():
            self._remember(key, max(0.0, self._seen.get(key, 0.0) + usd))

    async def _run_apply(self, batch: Batch, client: Client) -> object:
        keys = [f"{self._prefix}:applied:{batch.token}", *batch.usd]
        args: list[str | float | int] = [_APPLIED_S, len(batch.usd)]
        for usd, ttl_s in batch.usd.values():
            args += [usd, ttl_s]
        keys += [holds for holds, _ in batch.drops]
        args += [token for _, token in batch.drops]
        return await self._apply(keys, args, client)

    def _record(self, scopes: Sequence[str], usd: float, now: float) -> None:
        """Spend of a hold made while Redis was unreachable: pending until it is back."""
        for scope in scopes:
            day, month, _ = self._keys(scope, now)
            self._pending.spend(day, usd, _DAY_S)
            self._pending.spend(month, usd, _MONTH_S)
            for key in (day, month):
                self._remember(key, self._seen.get(key, 0.0) + usd)

    async def _reconcile(self) -> None:
        """Apply what was recorded while Redis was unreachable, once it answers again."""
        if self._reconciling or not (self._pending or self._unsure):
            return
        pending, self._pending = self._pending, Batch()
        batches = [*self._unsure, *([pending] if pending else [])]

        async def apply_all(client: Client) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for batch in batches:
                    await self._run_apply(batch, pipe)
                await pipe.execute()

        self._reconciling = True
        try:
            await self._store.call(apply_all)
        except StoreDown as down:
            if down.attempted:
                self._unsure = [*self._unsure, pending] if pending else self._unsure
            else:  # never sent: its token is unused, so it can take later spend
                pending.merge(self._pending)
                self._pending = pending
            return
        finally:
            self._reconciling = False
        done = {id(batch) for batch in batches}
        self._unsure = [batch for batch in self._unsure if id(batch) not in done]
        usd = sum(usd for batch in batches for key, (usd, _) in batch.usd.items() if ":d:" in key)
        self._log.warning("spend ledger: reconciled $%.6f spent while Redis was unreachable", usd)

    def _view(self, scopes: Sequence[str], now: float) -> Amounts:
        """This process's view of the scopes: the last values read, plus what it recorded since
        and the holds it made meanwhile."""
        out: Amounts = []
        for scope in scopes:
            day, month, _ = self._keys(scope, now)
            held = self._local_held(scope, now)
            out.append((self._seen.get(day, 0.0) + held, self._seen.get(month, 0.0) + held))
        return out

    def _local_held(self, scope: str, now: float) -> float:
        return sum(h.usd for h in self._local.values() if scope in h.scopes and h.expires_at > now)

    def _remember(self, key: str, usd: float) -> None:
        self._seen.pop(key, None)
        self._seen[key] = usd
        if len(self._seen) > _SEEN_MAX:
            del self._seen[next(iter(self._seen))]

    async def aclose(self) -> None:
        await self._reconcile()
        if self._pending or self._unsure:
            self._log.warning(
                "spend ledger: Redis unreachable at shutdown; unreconciled spend lost"
            )
        await self._store.aclose()


def _limit(usd: float | None) -> str | float:
    return "" if usd is None else usd


def _usd(value: bytes | str | None) -> float:
    return float(value) if value is not None else 0.0


def _live_amount(raw: bytes | str, now: float) -> float:
    """A hold's amount, or 0 once it has lapsed."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    expires, _, amount = text.partition(":")
    return float(amount) if int(expires) > now * 1000 else 0.0
