"""Learn from a deployment's labels: refit the gain head, compare candidate and current on
held-out labels, promote the candidate only when it is better; the `learn` command. Reads the
label store and writes the model store (Redis), or files.

Labels (router/offline/labelset.py) come from the label store at `--redis-url` (default
`$REDIS_URL`) or from `--labels FILE.jsonl`. A hash of each label's id holds out `--holdout` of
them; the rest, with the routing rows of `--data` if given, refit the gain head centred on the
live one (router/offline/refit.py: the shipped data enters as the prior; the difficulty head,
the blend and the calibration stay the live classifier's). Candidate and current are printed
side by side on the held-out labels, and the candidate is promoted only by `labelset.RULE`:
written to the model store (router/state/models.py), whose live version every flashpro
process polls and swaps in without a restart. `--rollback` takes the newest promotion back.
Same labels, same candidate: the fit, the split and the resampling are deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from router.offline.evaluate import read_rows
from router.offline.inputs import InputError, read_jsonl
from router.offline.labelset import (
    RULE,
    Figures,
    Label,
    figures,
    scores,
    split,
    usable,
    verdict,
)
from router.offline.refit import STRENGTH, Rows, refit_gain, with_gain
from router.routing.classify import (
    DifficultyClassifier,
    classifier_version,
    load_versioned,
    read_classifier,
)
from router.routing.features import extract
from router.state.labels import LabelsDown, open_labels
from router.state.models import ModelStore, RedisModelStore
from router.state.store import Store, StoreDown, connect

MIN_HELD_OUT = 10
TIMEOUT_S = 10.0
RUN_DEADLINE_S = 1800.0  # one periodic run, start to finish (100k labels fit in about a minute)


def add_learn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="the Redis of the label and model stores (default: $REDIS_URL)",
    )
    parser.add_argument(
        "--labels", type=Path, help="read labels from this JSON Lines file instead of Redis"
    )
    parser.add_argument(
        "--data", type=Path, help="routing rows (outcome pairs) added to the fit, e.g. train.jsonl"
    )
    parser.add_argument("--holdout", type=_share, default=0.2, help="share held out (0.2)")
    parser.add_argument(
        "--min-labels", type=_count, default=100, help="refuse with fewer usable labels (100)"
    )
    parser.add_argument(
        "--prior-strength",
        type=_positive,
        default=STRENGTH,
        help=f"how strongly the fit stays near the live gain head ({STRENGTH:g})",
    )
    parser.add_argument(
        "--model", type=Path, help="the current classifier when none is promoted (default: shipped)"
    )
    parser.add_argument("--out", type=Path, help="also write the candidate artifact here")
    parser.add_argument("--dry-run", action="store_true", help="evaluate only, promote nothing")
    parser.add_argument(
        "--rollback", action="store_true", help="restore the previously promoted classifier"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def run_learn(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _open(url: str | None) -> Store | None:
    if not url:
        return None
    try:
        return Store(connect(url, TIMEOUT_S))
    except ValueError as exc:
        raise InputError(f"--redis-url: {exc}") from None


async def _run(args: argparse.Namespace) -> int:
    store = _open(args.redis_url)
    models = RedisModelStore(store) if store is not None else None
    owner = secrets.token_hex(8)
    locked = False
    try:
        if models is not None and (args.rollback or not args.dry_run):
            locked = await models.claim(owner, RUN_DEADLINE_S)
            if not locked:
                raise InputError("another flashpro learn is promoting or rolling back: try later")
        if args.rollback:
            return await _rollback(models, args.json)
        return await _learn(args, store, models)
    except StoreDown:
        raise InputError(f"Redis at {args.redis_url} is unavailable") from None
    finally:
        if store is not None:
            if locked and models is not None:
                with contextlib.suppress(StoreDown):
                    await models.release(owner)
            await store.aclose()


async def _rollback(models: ModelStore | None, as_json: bool) -> int:
    if models is None:
        raise InputError("--rollback needs the model store: give --redis-url or set REDIS_URL")
    popped = await models.rollback()
    gone, live = popped if popped is not None else (None, None)
    if as_json:
        print(
            json.dumps(
                {"decision": "rolled-back" if gone else "nothing", "from": gone, "live": live}
            )
        )
    elif gone is None:
        print("nothing to roll back: no classifier was promoted")
    else:
        now = live or "the classifier each flashpro process started with (shipped)"
        print(f"rolled back {gone}; live: {now}")
    return 0


async def _read_labels(store: Store | None, path: Path | None) -> list[Any]:
    if path is not None:
        return [obj for _, obj in read_jsonl(path)]
    if store is None:
        raise InputError("no labels: give --labels FILE.jsonl, or --redis-url (or REDIS_URL)")
    try:
        return list(await open_labels(store).labels())
    except LabelsDown:
        raise StoreDown(attempted=True) from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"a label in the label store is not JSON ({exc})") from None


async def _current(
    models: ModelStore | None, model: Path | None
) -> tuple[DifficultyClassifier, str]:
    live = await models.live() if models is not None else None
    if live is None:
        try:
            return load_versioned(model)
        except OSError as exc:
            raise InputError(f"{model}: cannot read the classifier: {exc.strerror}") from None
        except ValueError as exc:
            raise InputError(f"{model}: not a flashpro classifier artifact ({exc})") from None
    data = await models.blob(live) if models is not None else None
    try:
        if data is None or classifier_version(data, live.partition("-")[0]) != live:
            raise ValueError("its artifact is missing or altered")
        return read_classifier(data), live
    except ValueError as exc:
        raise InputError(
            f"the live classifier {live} cannot be read ({exc}): flashpro learn --rollback"
        ) from None


@dataclass(frozen=True)
class Outcome:
    """What a run found and did (printed, and kept as the promoted model's report)."""

    current: str
    candidate: str
    before: Figures
    after: Figures
    read: int
    fit_n: int
    data_rows: int
    skipped: Counter[str]
    agreement: float
    decision: str  # promoted, kept or dry-run
    reason: str
    wins: float

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "rule": RULE,
            "current": {"version": self.current, **self.before.as_json()},
            "candidate": {"version": self.candidate, **self.after.as_json()},
            "labels": {
                "read": self.read,
                "used": self.fit_n + self.before.n,
                "fit": self.fit_n,
                "heldout": self.before.n,
                "skipped": dict(sorted(self.skipped.items())),
                "agreement": self.agreement,
            },
            "data_rows": self.data_rows,
            "resamples_better": self.wins,
        }


def _rows(fit: list[Label], data: Path | None) -> tuple[Rows, int]:
    indices = [lb.indices for lb in fit]
    values = [lb.values for lb in fit]
    targets = [lb.gain for lb in fit]
    extra = read_rows(data) if data is not None else []
    for row in extra:
        features = extract(row.request)
        indices.append(tuple(features.indices))
        values.append(tuple(features.values))
        targets.append((1.0 + row.gain) / 2.0)
    return Rows(indices, values, targets, [1.0] * len(targets)), len(extra)


async def _learn(args: argparse.Namespace, store: Store | None, models: ModelStore | None) -> int:
    if models is None and not (args.dry_run or args.out):
        raise InputError(
            "nowhere to promote to: give --redis-url (or REDIS_URL), --out or --dry-run"
        )
    records = await _read_labels(store, args.labels)
    labels, skipped = usable(records)
    if len(labels) < args.min_labels:
        raise InputError(
            f"{len(labels)} usable labels (of {len(records)}), fewer than --min-labels "
            f"{args.min_labels}: collect more (the policy's learning section) or lower it"
        )
    fit, held = split(labels, args.holdout)
    if len(held) < MIN_HELD_OUT or not fit:
        raise InputError(
            f"{len(held)} held-out and {len(fit)} fitted labels: too few to compare "
            "(collect more labels or change --holdout)"
        )
    current, current_version = await _current(models, args.model)
    rows, data_rows = _rows(fit, args.data)
    gain = refit_gain(current.gain, rows, args.prior_strength)
    info: dict[str, str | float] = {
        "learned_from": current_version,
        "learned_labels": float(len(fit)),
        "learned_data_rows": float(data_rows),
    }
    candidate = with_gain(current, gain, info)
    blob = candidate.to_bytes()
    candidate_version = classifier_version(blob, "learned")
    gains = np.array([lb.gain for lb in held])
    judged = verdict(scores(current, held), scores(candidate, held), gains)
    if args.dry_run or models is None:  # without a model store, --out has the candidate
        decision = "dry-run"
    else:
        decision = "promoted" if judged.promote else "kept"
    if args.out is not None:
        args.out.write_bytes(blob)
    outcome = Outcome(
        current_version,
        candidate_version,
        figures(current, held),
        figures(candidate, held),
        len(records),
        len(fit),
        data_rows,
        skipped,
        sum(lb.agree for lb in labels) / len(labels),
        decision,
        judged.reason,
        judged.wins,
    )
    if decision == "promoted" and models is not None:
        report = {**outcome.as_json(), "promoted_at": time.time(), "previous": current_version}
        await models.promote(candidate_version, blob, report)
    print(json.dumps(outcome.as_json()) if args.json else render(outcome, judged.promote))
    return 0


def _figure(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(outcome: Outcome, better: bool) -> str:
    """Candidate and current side by side, then what was done."""
    before, after = outcome.before, outcome.after
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(outcome.skipped.items())) or "none"
    lines = [
        f"labels     {outcome.read} read, {outcome.fit_n + before.n} used "
        f"(fit {outcome.fit_n}, held out {before.n}), skipped: {skipped}; "
        f"judges agreed on {outcome.agreement:.0%}",
        f"{'':18} {'current':>24} {'candidate':>24}",
        f"{'version':18} {outcome.current:>24} {outcome.candidate:>24}",
        f"{'held-out n':18} {before.n:>24} {after.n:>24}",
        f"{'APGR':18} {_figure(before.apgr):>24} {_figure(after.apgr):>24}",
        f"{'AUC strong won':18} {_figure(before.auc):>24} {_figure(after.auc):>24}",
        f"{'gain log loss':18} {_figure(before.log_loss):>24} {_figure(after.log_loss):>24}",
        f"rule: {RULE}",
    ]
    if outcome.data_rows:
        lines.insert(1, f"data       {outcome.data_rows} routing rows added to the fit")
    if outcome.decision == "dry-run":
        lines.append(f"dry run: would {'promote' if better else 'keep'} ({outcome.reason})")
    elif outcome.decision == "promoted":
        lines.append(f"promoted {outcome.candidate} ({outcome.reason})")
    else:
        lines.append(f"kept {outcome.current} ({outcome.reason})")
    return "\n".join(lines)


class PeriodicLearning:
    """The policy's `learning.refit_hours`, run by `flashpro serve`: every so many hours,
    `flashpro learn` in a child process (the server never imports this module) against
    REDIS_URL, with a deadline, its outcome logged in one line. The policy file is re-read on
    every tick, so an edit that sets, changes or removes `refit_hours` takes effect."""

    def __init__(
        self,
        policy: Path | None,
        redis_url: str | None,
        log: logging.Logger,
        deadline_s: float = RUN_DEADLINE_S,
    ) -> None:
        self._policy = policy
        self._redis_url = redis_url
        self._log = log
        self._deadline_s = deadline_s
        self.stop = threading.Event()
        self._warned = False

    def hours(self) -> float | None:
        from router.routing.policy import PolicyError, load_policy

        try:
            learning = load_policy(self._policy)[0].learning
        except PolicyError:
            return None  # the server logs the bad edit; the job waits for a good one
        return learning.refit_hours if learning is not None else None

    def run(self) -> None:
        """Until `stop` is set: wait out each period, then learn once."""
        last = time.monotonic()
        while True:
            hours = self.hours()
            tick = 60.0 if hours is None else min(60.0, max(0.2, hours * 360))
            if self.stop.wait(tick):
                return
            if hours is not None and time.monotonic() - last >= hours * 3600:
                last = time.monotonic()
                self.once()

    def once(self) -> str:
        """Run `flashpro learn` once; its outcome line (also logged)."""
        if not self._redis_url:
            if not self._warned:
                self._log.warning("learning.refit_hours needs REDIS_URL (the label store)")
                self._warned = True
            return "no REDIS_URL"
        command = [sys.executable, "-m", "router", "learn", "--redis-url", self._redis_url]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self._deadline_s, check=False
            )
        except subprocess.TimeoutExpired:
            outcome = f"stopped after {self._deadline_s:.0f} s without an outcome"
        else:
            lines = (done.stdout.strip() or done.stderr.strip() or "no output").split("\n")
            outcome = lines[-1]
        self._log.info("flashpro learn: %s", outcome)
        return outcome


@contextlib.contextmanager
def periodic_learning(policy: Path | None, redis_url: str | None) -> Iterator[PeriodicLearning]:
    """The periodic job in a daemon thread while open."""
    job = PeriodicLearning(policy, redis_url, logging.getLogger("flashpro.learn"))
    threading.Thread(target=job.run, name="flashpro-learn", daemon=True).start()
    try:
        yield job
    finally:
        job.stop.set()
