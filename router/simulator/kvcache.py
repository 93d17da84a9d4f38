"""The simulated DeepSeek's context cache on disk: prefix units and the hits they give. In-memory.

DeepSeek's rule (api-docs.deepseek.com/guides/kv_cache): each cached prefix is an independent,
complete unit, and a later request hits the cache only when it fully matches a persisted unit.
Units are persisted
1. at the end of each request's input and at the end of its output,
2. at a common prefix the system detects across requests (request `A+B`, then `A+C`: the second
   misses, but `A` is persisted, so a third request `A+D` hits `A`),
3. at fixed token intervals inside long inputs and outputs.
So a new request whose messages merely share some earlier messages with a past request is a miss
until that shared prefix has itself become a unit. The simulator models units at message
boundaries; rule 3 is modelled as a boundary unit once `interval_tokens` more have passed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

Prefix = tuple[bytes, int]  # (digest of the prompt up to a message boundary, its tokens)


class PrefixCache:
    """Persisted prefix units, and the message-boundary prefixes seen so far (to detect common
    prefixes); both bounded, least recently used out first."""

    def __init__(self, max_entries: int = 200_000, interval_tokens: int = 4096) -> None:
        self._units: OrderedDict[bytes, None] = OrderedDict()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._max = max_entries
        self._interval = interval_tokens

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._units

    def lookup(self, prefixes: Sequence[Prefix], output: bytes) -> int:
        """Tokens of the longest persisted unit the prompt fully matches; then persist this
        request's units: the whole input, the output, a detected common prefix, intervals.

        `prefixes` are the prompt's message-boundary prefixes, shortest first (the first is the
        model-and-tools root, the last the whole input); `output` is the digest of the input
        followed by the answer."""
        hit = next((tokens for digest, tokens in reversed(prefixes) if digest in self._units), 0)
        boundaries = prefixes[1:-1]
        common = next((p for p in reversed(boundaries) if p[0] in self._seen), None)
        units = [prefixes[-1][0], output]
        if common is not None:
            units.append(common[0])
        units += _intervals(prefixes, self._interval)
        for digest in units:
            _touch(self._units, digest, self._max)
        for digest, _ in boundaries:
            _touch(self._seen, digest, self._max)
        return hit


def _intervals(prefixes: Sequence[Prefix], interval: int) -> list[bytes]:
    """A unit at the first boundary past every `interval` tokens of a long input."""
    out: list[bytes] = []
    mark = interval
    for digest, tokens in prefixes[1:-1]:
        if tokens >= mark:
            out.append(digest)
            mark = tokens + interval
    return out


def _touch(table: OrderedDict[bytes, None], digest: bytes, limit: int) -> None:
    table[digest] = None
    table.move_to_end(digest)
    while len(table) > limit:
        table.popitem(last=False)
