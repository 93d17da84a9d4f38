"""Hot reload: the watchers that swap an edited policy, or a newly promoted classifier, into the
live routing's holder. Does I/O (reads the policy file, polls the model store)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from router.routing.classify import Classifier, classifier_version, read_classifier
from router.routing.policy import Policy, PolicyError, parse_policy
from router.routing.routed import Routing, RoutingHolder
from router.state.models import ModelStore
from router.state.store import StoreDown

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


class ModelReloader:
    """Swaps in the classifier the model store names live; with none promoted, the one this
    process started with (`base`). A blob that is missing, altered (its bytes no longer hash to
    its version) or not a valid artifact keeps the live classifier, and the error shows in
    /readyz until the store names a good one. An unreachable store changes nothing."""

    def __init__(
        self,
        holder: RoutingHolder,
        store: ModelStore,
        base: tuple[Classifier, str],
        environ: Mapping[str, str],
    ) -> None:
        self._holder = holder
        self._store = store
        self._base = base
        self._environ = environ
        self._failed_version: str | None = None
        self._lock = asyncio.Lock()  # a SIGHUP during a poll waits for it

    async def check(self, force: bool = False) -> bool:
        """Swap in the store's live classifier if it changed (`force`: even one that failed to
        load before). True on a swap."""
        async with self._lock:
            try:
                wanted = await self._store.live() or self._base[1]
                if wanted == self._holder.current.classifier_version:
                    self._holder.model_error = None
                    self._failed_version = None
                    return False
                if wanted == self._failed_version and not force:
                    return False
                classifier = await self._load(wanted)
            except StoreDown:
                return False
            except ValueError as exc:
                self._failed_version = wanted
                self._holder.model_error = f"classifier {wanted[:80]}: {exc}"
                log.error(
                    "classifier reload failed, keeping %s: %s",
                    self._holder.current.classifier_version,
                    self._holder.model_error,
                )
                return False
            self._holder.swap(
                self._holder.current.with_classifier(classifier, wanted, self._environ)
            )
            self._holder.model_error = None
            self._failed_version = None
            log.info("classifier %s is live", wanted)
            return True

    async def _load(self, version: str) -> Classifier:
        if version == self._base[1]:
            return self._base[0]
        data = await self._store.blob(version)
        if data is None:
            raise ValueError("the model store has no artifact for it")
        kind = version.partition("-")[0]
        if classifier_version(data, kind) != version:
            raise ValueError("the stored artifact's bytes do not match its version")
        # ~1 MB of NPZ to unpack and check: off the event loop
        return await asyncio.to_thread(read_classifier, data)


async def _watch(
    policies: PolicyReloader | None, models: ModelReloader | None, interval_s: float
) -> None:
    """Poll until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        if policies is not None:
            policies.check()
        if models is not None:
            await models.check()


@contextlib.asynccontextmanager
async def hot_reload(
    holder: RoutingHolder,
    path: Path | None,
    build: Callable[[Policy, str], Routing],
    interval_s: float,
    models: ModelReloader | None = None,
) -> AsyncIterator[PolicyReloader | None]:
    """While open: poll the policy file and the model store every `interval_s` (0 = no
    polling) and check both on SIGHUP. The embedded default policy (no path) never changes, so
    only the model store is watched then. The store's live model is loaded before this opens."""
    reloader = PolicyReloader(holder, path, build) if path is not None else None
    if reloader is not None:
        reloader.check()  # remember the file as it is now
    if models is not None:
        await models.check()
    watching = reloader is not None or models is not None
    task = (
        asyncio.create_task(_watch(reloader, models, interval_s))
        if interval_s > 0 and watching
        else None
    )
    checks: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        if reloader is not None:
            reloader.check(True)
        if models is not None:
            check = asyncio.create_task(models.check(force=True))
            checks.add(check)
            check.add_done_callback(checks.discard)

    loop = asyncio.get_running_loop()
    sighup = False
    if watching:
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
            sighup = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, Windows
            sighup = False
    try:
        yield reloader
    finally:
        if sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        for running in (task, *checks):
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
