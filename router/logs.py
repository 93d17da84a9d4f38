"""Structured access logs: one JSON line per chat request on the `flashpro.access` logger.
`access_line` is pure; `emit` and `configure_access_log` touch the logging system.

Prompt text is left out unless the policy's `observability.log_prompts` is true.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from router.observe import RequestRecord

ACCESS_LOGGER = "flashpro.access"


def access_line(record: RequestRecord) -> dict[str, Any]:
    """The log fields of one request (a small dict: no prompt unless opted in)."""
    decision = record.decision
    usage = record.usage
    line: dict[str, Any] = {
        "event": "request",
        "request_id": record.request_id,
        "tenant": record.tenant,
        "alias": decision.alias if decision else None,
        "score": round(decision.score, 4) if decision else None,
        "tier": decision.tier if decision else None,
        "rule": decision.rule if decision else None,
        "cache": record.cache,
        "status": record.status,
        "error": record.error,
        "stream": record.stream,
        "latency_ms": round(record.latency_ms, 1),
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 1),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": round(record.cost_usd, 8),
        "savings_usd": round(record.savings_usd, 8),
    }
    if record.options.log_prompts and record.request is not None:
        line["messages"] = [m.model_dump(exclude_none=True) for m in record.request.messages]
    return line


def emit(logger: logging.Logger, line: dict[str, Any]) -> None:
    logger.info(orjson.dumps(line).decode())


def configure_access_log(stream: IO[str] | None = None) -> logging.Logger:
    """Access lines as bare JSON on stdout (not wrapped in the process log format)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(getattr(h, "flashpro_access", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.flashpro_access = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
