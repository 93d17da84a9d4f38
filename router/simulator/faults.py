"""The simulated DeepSeek's errors and faults: DeepSeek's error bodies, and the misbehaviour a
test asks for with a `[[sim:key=value]]` marker or `POST /_sim/faults`. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Final

_MARKER: Final = re.compile(r"\[\[sim:([a-z_]+)=([0-9.]+)\]\]")
# DeepSeek's wording per status (api-docs.deepseek.com/quick_start/error_codes)
_STATUS_MESSAGES: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "Invalid Format",
        401: "Authentication Fails",
        402: "Insufficient Balance",
        422: "Invalid Parameters",
        429: "Rate Limit Reached",
        500: "Server Error",
        503: "Server Overloaded",
    }
)
# Fault fields by the names markers and `POST /_sim/faults` use (either spelling works in both).
_FAULT_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {"retry_after": "retry_after_s", "disconnect_after_chunks": "disconnect_after"}
    | {
        k: k
        for k in (
            "status",
            "retry_after_s",
            "delay_ms",
            "disconnect_after",
            "slow",
            "queue_ms",
            "empty_events",
        )
    }
)


class SimError(Exception):
    """An error the simulator answers with, rendered in the OpenAI/DeepSeek error envelope."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, dict[str, str | None]]:
        """DeepSeek's error body: 4xx carry code `invalid_request_error` (a 402's type is
        `unknown_error`, as DeepSeek sends it)."""
        kind = {401: "authentication_error", 402: "unknown_error", 429: "rate_limit_error"}
        error_type = kind.get(self.status) or (
            "invalid_request_error" if self.status < 500 else "api_error"
        )
        code = "invalid_request_error" if self.status < 500 else "api_error"
        return {"error": {"message": self.message, "type": error_type, "param": None, "code": code}}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Misbehaviour asked for by a `[[sim:...]]` marker or the fault queue; None = not asked."""

    status: int | None = None
    retry_after_s: float | None = None
    delay_ms: float | None = None  # absolute, before the response headers; not scaled by speed
    disconnect_after: int | None = None  # SSE events sent before the connection is dropped
    slow: float | None = None  # latency multiplier
    queue_ms: float | None = None  # "queued" this long first, sending keep-alive lines
    empty_events: int | None = None  # empty `data:` events sent after the first stream event

    def error(self) -> SimError | None:
        if self.status is None:
            return None
        if self.status == 429:
            retry_after = self.retry_after_s or 1.0
            return SimError(429, "Rate Limit Reached", retry_after_s=retry_after)
        message = _STATUS_MESSAGES.get(self.status, f"Simulated upstream error {self.status}")
        return SimError(self.status, message, retry_after_s=self.retry_after_s)

    def over(self, base: FaultSpec) -> FaultSpec:
        """This spec with unset fields taken from `base`."""
        mine = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in mine.items() if v is not None})


def markers_in(text: str) -> FaultSpec:
    """The fault the `[[sim:...]]` markers in a message ask for (none: an empty spec)."""
    if "[[sim:" not in text:
        return FaultSpec()
    return parse_fault(dict(_MARKER.findall(text)))


def parse_fault(values: Mapping[str, object]) -> FaultSpec:
    """A fault from marker values or a `POST /_sim/faults` body."""
    unknown = set(values) - set(_FAULT_KEYS) - {"count", "model"}
    if unknown:
        raise SimError(400, f"Unknown simulator fault field: {', '.join(sorted(unknown))}")
    try:
        found = {
            _FAULT_KEYS[k]: float(str(v))
            for k, v in values.items()
            if k in _FAULT_KEYS and v is not None
        }
    except ValueError:
        raise SimError(400, f"Invalid simulator fault: {dict(values)}") from None
    if "status" not in found and "retry_after_s" in found:
        found["status"] = 429
    if not 400 <= found.get("status", 400) <= 599:
        raise SimError(400, f"Invalid simulator fault: status {found['status']:g} is not an error")
    status, disconnect = found.get("status"), found.get("disconnect_after")
    empty = found.get("empty_events")
    return FaultSpec(
        status=None if status is None else int(status),
        retry_after_s=found.get("retry_after_s"),
        delay_ms=found.get("delay_ms"),
        disconnect_after=None if disconnect is None else int(disconnect),
        slow=found.get("slow"),
        queue_ms=found.get("queue_ms"),
        empty_events=None if empty is None else int(empty),
    )
