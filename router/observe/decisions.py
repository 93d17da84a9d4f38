"""The decision log: routing decisions and the feedback applications send about their answers, as
JSON Lines that `flashpro train` reads. Buffered in memory and appended to the file in the
background (`flushing`), never once per request; `join` and `label_of` are pure.

A decision line (the format `router.train` documents, plus routing facts):

    {"id": "<request id>", "key": "<16 hex of the client key's sha256, or null>",
     "request": {"messages": [...], "tools": ..., "response_format": ...}, "tier": "flash", "tier_rank": 0, "alias": "auto", "score": 0.31, "rule": "...",
     "reason": "...", "cache": "miss", "status": 200, "cost_usd": ..., "at": <unix time>}

Feedback (`POST /v1/feedback`) for a decision still in the buffer is written into its line;
otherwise it is appended on its own, `{"id": ..., "key": ..., "feedback": {...}}`, and `join`
(used by `flashpro train`'s reader) merges it into the decision with the same id and key:
only the key that made a request may rate it. A joined line carries
`label`, the gain of a stronger tier, and `feedback.strong_better` / `weak_better`:

* served by the weakest tier: a good answer means the weak tier was enough (label 0), a bad one
  that a stronger tier was needed (label 1);
* served by a stronger tier: a good answer counts for the stronger tier (label 1), a bad one says
  it did not help (label 0).

A score in [0, 1] in place of `good` gives the fractions in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from router.observe.record import RequestRecord
from router.routing.policy import DecisionLogPolicy

_REQUEST_FIELDS = ("messages", "tools", "tool_choice", "response_format")
log = logging.getLogger("flashpro.decisions")
_PENDING_MAX = 10_000  # decisions kept in memory, waiting for the next flush
_OWNERS_MAX = 16_384  # recent request ids and the key that made each, for feedback


def label_of(tier_rank: int, score: float) -> float:
    """The stronger tier's gain, from an answer's quality score (1 good, 0 bad)."""
    score = min(max(score, 0.0), 1.0)
    return 1.0 - score if tier_rank == 0 else score


def feedback_fields(tier_rank: int, score: float) -> dict[str, Any]:
    label = label_of(tier_rank, score)
    return {
        "label": label,
        "feedback": {"score": score, "strong_better": label > 0.5, "weak_better": False},
    }


def owner_of(key: str | None) -> str | None:
    """How the log names the key that made a request: a prefix of its sha256 digest (enough to
    tell keys apart, not to find one)."""
    return key[:16] if key else None


def decision_line(record: RequestRecord, include_request: bool) -> dict[str, Any]:
    decision = record.decision
    assert decision is not None
    line: dict[str, Any] = {
        "id": record.request_id,
        "key": owner_of(record.key),
        "tier": decision.tier,
        "tier_rank": record.tier_rank,
        "alias": decision.alias,
        "score": decision.score,
        "rule": decision.rule,
        "reason": decision.reason,
        "cache": record.cache,
        "status": record.status,
        "cost_usd": record.cost_usd,
        "at": record.at,
    }
    if include_request and record.request is not None:
        body = record.request.model_dump(include=set(_REQUEST_FIELDS), exclude_none=True)
        line["request"] = body
    return line


def join(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Merge feedback-only lines into their decisions (a rating counts only when it came with
    the key that made the request); drop decisions nobody rated (they have no label) and
    feedback without a decision. Rows of other formats pass through unchanged."""
    # by request id and the key that made the request (or rated it): two callers who chose
    # the same x-request-id never see each other's decisions or ratings
    decisions: dict[tuple[str, str | None], dict[str, Any]] = {}
    ratings: dict[tuple[str, str | None], float] = {}
    for row in rows:
        if "tier_rank" not in row and not _is_feedback(row):
            yield row  # routing data or a hand-labelled log line
        elif _is_feedback(row):
            ratings[(str(row["id"]), row.get("key"))] = float(row["feedback"]["score"])
        else:
            decisions[(str(row["id"]), row.get("key"))] = row  # first seen keeps its place
    for owned, row in decisions.items():
        if "label" in row:
            yield row
        elif owned in ratings:
            yield {**row, **feedback_fields(int(row["tier_rank"]), ratings[owned])}


def _is_feedback(row: Mapping[str, Any]) -> bool:
    """A feedback-only line (hand-labelled rows carry their prompt and no `score`)."""
    rated = isinstance(row.get("feedback"), Mapping) and "score" in row["feedback"]
    return rated and not {"tier_rank", "request", "messages", "prompt"} & row.keys()


class DecisionLogLost(Exception):
    """The last buffered lines could not be written at shutdown."""


class DecisionLog:
    """Buffers decision lines and feedback; `flush` appends them to the file in one write.

    One bad line never stops the log: a line that cannot be encoded (JSON nested past what the
    encoder writes, say) is counted and dropped, and the rest are written; a failed write is
    counted and logged, and the next flush goes on. `on_drop(reason, lines)` reports both."""

    def __init__(
        self,
        path: Path,
        include_request: bool = True,
        flush_s: float = 2.0,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.path = path
        self.include_request = include_request
        self.flush_s = flush_s
        self.on_drop = on_drop
        self.dropped = 0  # lines that could not be encoded
        self.lost = 0  # lines in writes that failed
        # by request id and the key that made it (callers may choose the same x-request-id)
        self._pending: OrderedDict[tuple[str, str | None], dict[str, Any]] = OrderedDict()
        self._feedback: list[dict[str, Any]] = []
        self._owners: OrderedDict[str, set[str | None]] = OrderedDict()  # id -> its keys

    @classmethod
    def from_policy(
        cls, config: DecisionLogPolicy, on_drop: Callable[[str, int], None] | None = None
    ) -> DecisionLog:
        return cls(Path(config.path), config.include_request, config.flush_seconds, on_drop)

    def decision(self, record: RequestRecord) -> None:
        line = decision_line(record, self.include_request)
        self._pending[(record.request_id, line["key"])] = line
        if len(self._pending) > _PENDING_MAX:  # flushing fell behind: keep memory bounded
            self._pending.popitem(last=False)
        self._owners.setdefault(record.request_id, set()).add(line["key"])
        if len(self._owners) > _OWNERS_MAX:
            self._owners.popitem(last=False)

    def feedback(self, request_id: str, score: float, key: str | None = None) -> bool:
        """Record a rating from the caller whose key digest is `key`: joined now if its decision
        is still buffered, else logged on its own. False (nothing recorded) when a recent
        request of that id was made with another key; `join` checks the key of older ones."""
        owner = owner_of(key)
        if owner not in self._owners.get(request_id, {owner}):
            return False
        line = self._pending.get((request_id, owner))
        if line is not None:
            line.update(feedback_fields(int(line["tier_rank"]), score))
        else:
            self._feedback.append({"id": request_id, "key": owner, "feedback": {"score": score}})
        return True

    def take(self) -> bytes:
        """The buffered lines as one block, emptying the buffer; lines that cannot be encoded
        are dropped and counted."""
        lines = [*self._pending.values(), *self._feedback]
        self._pending.clear()
        self._feedback.clear()
        out: list[bytes] = []
        for line in lines:
            try:
                out.append(orjson.dumps(line))
            except orjson.JSONEncodeError as exc:
                self._dropped("unencodable", 1)
                log.warning("decision log: dropped line %.80s: %s", line.get("id"), exc)
        out.append(b"")
        return b"\n".join(out) if len(out) > 1 else b""

    def flush(self) -> None:
        block = self.take()
        if block:
            self._append(block)

    async def write_out(self) -> bool:
        """Append what is buffered, off the event loop. False when the write failed (its lines
        are counted as lost and logged; a full or missing disk must not stop the server)."""
        block = self.take()
        if not block:
            return True
        try:
            await asyncio.to_thread(self._append, block)
        except OSError as exc:
            self._dropped("write_failed", block.count(b"\n"))
            log.warning("decision log %s: cannot write: %s", self.path, exc)
            return False
        return True

    @asynccontextmanager
    async def flushing(self) -> AsyncIterator[None]:
        """Flush every `flush_s` seconds in a background task, and once more at the end (a
        write in progress is finished, not cancelled). Raises `DecisionLogLost` when that last
        write fails, so the shutdown is reported as failed."""
        stop = asyncio.Event()

        async def loop() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.flush_s)
                if stop.is_set():
                    return  # the last write is the shutdown's, below
                await self.write_out()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            stop.set()
            await task
            if not await self.write_out():
                raise DecisionLogLost(f"decision log {self.path}: the last lines were not written")

    def _dropped(self, reason: str, lines: int) -> None:
        if reason == "unencodable":
            self.dropped += lines
        else:
            self.lost += lines
        if self.on_drop is not None:
            self.on_drop(reason, lines)

    def _append(self, block: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:  # one append of whole lines, even with many writers
            out.write(block)
