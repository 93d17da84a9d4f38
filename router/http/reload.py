"""Hot reload: the watcher that swaps edited policies into the live routing's holder.
Does I/O (reads the policy file)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from router.routing.policy import Policy, PolicyError, parse_policy
from router.routing.routed import Routing, RoutingHolder

log = logging.getLogger("flashpro.reload")


class PolicyReloader:
    """Re-reads a policy file when its content changes; an invalid edit keeps the live policy."""

    def __init__(
        self, holder: RoutingHolder, path: Path, build: Callable[[Policy, str], Routing]
    ) -> None:
        self._holder = holder
        self._path = path
        self._build = build
        self._seen: tuple[float, int] | None = None
        self._failed_version: str | None = None

    def check(self, force: bool = False) -> bool:
        """Reload if the file changed (mtime and size, then the content hash). True on a swap."""
        try:
            stat = self._path.stat()
            if not force and self._seen == (stat.st_mtime, stat.st_size):
                return False
            self._seen = (stat.st_mtime, stat.st_size)
            text = self._path.read_text("utf-8")
        except OSError as exc:
            return self._failed(f"{self._path}: cannot read: {exc.strerror}", None)
        version = hashlib.sha256(text.encode()).hexdigest()[:12]
        if version == self._holder.current.version:
            if self._holder.last_error is not None:  # the file is back to the live policy
                log.info("policy %s matches live version %s again", self._path, version)
            self._holder.last_error = None
            self._failed_version = None
            return False
        if version == self._failed_version and not force:
            return False
        try:
            policy = parse_policy(text, str(self._path))
            routing = self._build(policy, version)
        except PolicyError as exc:
            return self._failed(str(exc), version)
        self._holder.swap(routing)
        self._holder.last_error = None
        self._failed_version = None
        log.info("policy %s reloaded: version %s is live", self._path, version)
        return True

    def _failed(self, message: str, version: str | None) -> bool:
        self._failed_version = version
        self._holder.last_error = message
        log.error(
            "policy reload failed, keeping version %s: %s", self._holder.current.version, message
        )
        return False

    async def watch(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.check()


@contextlib.asynccontextmanager
async def hot_reload(
    holder: RoutingHolder,
    path: Path | None,
    build: Callable[[Policy, str], Routing],
    interval_s: float,
) -> AsyncIterator[PolicyReloader | None]:
    """While open: poll the policy file every `interval_s` (0 = no polling) and reload on SIGHUP.
    The embedded default policy (no path) never changes, so nothing is watched."""
    if path is None:
        yield None
        return
    reloader = PolicyReloader(holder, path, build)
    reloader.check()  # remember the file as it is now
    task = asyncio.create_task(reloader.watch(interval_s)) if interval_s > 0 else None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reloader.check, True)
        sighup = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or Windows
        sighup = False
    try:
        yield reloader
    finally:
        if sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
