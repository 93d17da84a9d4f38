"""Structured access logs: one JSON line per chat request on the `flashpro.access` logger.
`access_line` is pure; `emit` and `configure_access_log` touch the logging system.

Prompt text is left out unless the policy's `observability.log_prompts` is true.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson

from router.observe.record import RequestRecord

ACCESS_LOGGER = "flashpro.access"


def access_line(record: RequestRecord) -> dict[str, Any]:
    """The log fields of one request (a small dict: no prompt unless opted in)."""
    decision = record.decision
    usage = record.usage
    line: dict[str, Any] = {
        "event": "request",
        "request_id": record.request_id,
        "api": record.api,
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
    text = orjson.dumps(line).decode()
    handlers = logger.handlers
    if not logger.propagate and len(handlers) == 1 and type(handlers[0]) is LineHandler:
        handlers[0].write(text)  # what `logger.info` ends in, without building a LogRecord
    else:
        logger.info(text)


class LineHandler(logging.StreamHandler[IO[str]]):
    """Bare JSON lines, written to the stream's buffer without a flush per line (a write call per
    request costs more than the rest of a cache hit): `flush_access_log` pushes them out, every
    FLUSH_S while the app runs (router/observe/observer.py) and at exit."""

    flashpro_access = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(record.getMessage())
        except Exception:
            self.handleError(record)

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")


FLUSH_S = 0.5


def configure_access_log(stream: IO[str] | None = None) -> logging.Logger:
    """Access lines as bare JSON on stdout (not wrapped in the process log format)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(getattr(h, "flashpro_access", False) for h in logger.handlers):
        logger.addHandler(LineHandler(stream or sys.stdout))
    return logger


def flush_access_log() -> None:
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()
