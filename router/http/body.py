"""Parse a request body at the edge: JSON, refused with a 400 when it nests deeper than a cap.
Pure: no I/O.

orjson reads up to 1,024 levels but writes only 254, so a deeper value accepted here would fail
later, when the request is relayed or logged. Nothing flashpro reads nests anywhere near the cap
(64 by default); a tool's JSON Schema of 25 levels still fits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from router.errors import InvalidRequest

MAX_JSON_DEPTH = 64
_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')  # every other byte, to delete
# +1 for an opener, -1 (255 as a signed byte) for a closer, 0 for anything else; read-only
_STEPS = np.frombuffer(
    bytes(1 if byte in b"[{" else 255 if byte in b"]}" else 0 for byte in range(256)),
    dtype=np.int8,
)
_QUOTE = ord('"')


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether the JSON text `body` (valid JSON) nests objects and arrays more than `limit`
    levels deep. Bytewise, at memory speed: escaped quotes and backslashes are dropped, then
    everything but quotes and brackets; brackets inside strings (after an odd number of
    quotes) do not count; the deepest running total of openers minus closers is the depth."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _STRUCTURE)
    if marks.count(b"{") + marks.count(b"[") <= limit:
        return False
    chars = np.frombuffer(marks, dtype=np.uint8)
    outside = (np.cumsum(chars == _QUOTE, dtype=np.int32) & 1) == 0
    steps = _STEPS[chars] * outside
    return int(steps.cumsum(dtype=np.int32).max(initial=0)) > limit


def loads(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of `body`; a 400 for invalid JSON or nesting past `max_depth`."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)[:200]
        if "depth limit" in reason:
            raise too_deep(max_depth) from None
        raise InvalidRequest(f"The request body is not valid JSON: {reason}") from None
    if nests_deeper(body, max_depth):
        raise too_deep(max_depth)
    return value


def too_deep(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests JSON objects and arrays more than {limit} levels deep.",
        code="json_too_deep",
    )
