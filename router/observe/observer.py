"""Observe finished requests: each `RequestRecord` (router/observe/record.py) fanned out to the
metrics, the access log, the dashboard's rolling aggregates and the decision log. I/O only
through those."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from router.observe.decisions import DecisionLog
from router.observe.logs import FLUSH_S, access_line, emit, flush_access_log
from router.observe.metrics import Metrics
from router.observe.record import RequestRecord
from router.observe.rolling import Rolling
from router.routing.policy import Policy


class Observer:
    """Where finished requests go. Cheap on the hot path: counter increments, one small dict
    for the rolling window, a buffered decision-log line; files are written in the background."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        rolling: Rolling | None = None,
        decision_log: DecisionLog | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.rolling = rolling or Rolling()
        self.decision_log = decision_log
        self.log = logger or logging.getLogger("flashpro.access")

    @classmethod
    def for_policy(cls, policy: Policy) -> Observer:
        config = policy.observability.decision_log
        if config is None:
            return cls()
        metrics = Metrics()
        return cls(metrics, decision_log=DecisionLog.from_policy(config, metrics.decision_log_drop))

    def request_done(self, record: RequestRecord) -> None:
        self.metrics.request_done(record)
        self.rolling.add(record)
        if self.log.isEnabledFor(logging.INFO):
            emit(self.log, access_line(record))
        if self.decision_log is not None and record.decision is not None:
            self.decision_log.decision(record)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flush the access and decision logs (and the metrics of a worker among several) in the
        background while the app serves, and once more at the end."""
        flusher = asyncio.ensure_future(self._flush_every(FLUSH_S))
        try:
            if self.decision_log is None:
                yield
            else:
                async with self.decision_log.flushing():
                    yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self.flush()

    def flush(self) -> None:
        """Write out the buffered access lines and, in multiprocess mode, the metrics."""
        self.metrics.flush()
        flush_access_log()

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.flush()
