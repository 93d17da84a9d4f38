"""Fit the difficulty classifier and write its artifact; the `train` command. Reads data, writes a file.

The only module that uses scikit-learn, and only inside `fit` (imported there, so the CLI and
the server never load it). Deterministic: same data, same artifact.

Input rows (JSON Lines; both formats may be mixed in one file):

* routing data: `{"id", "source", "prompt", "strong_correct", "weak_correct", "meta"}`, as in
  `shared/data/routing`. The target is `strong - weak`, using `meta.strong_correct_lenient` /
  `meta.weak_correct_lenient` where present (GSM8K's published labels undercount GPT-4).
* the proxy's decision log joined with feedback, so a deployment can retrain on its traffic:
  `{"id": "...", "request": {<chat completions body: "messages", "tools", "response_format",
  ...>}, "tier": "flash", "feedback": {"strong_better": true, "weak_better": false}}`, or the
  short form `{"id": "...", "messages": [...], "label": 1}`. `label` is the gain of the strong
  tier: 1 = the strong tier was needed, 0 = the weak answer was as good, -1 = the weak one was
  better (fractions allowed). `feedback.strong_better` maps to 1, `feedback.weak_better` to -1,
  both false to 0. `source` is optional (used for per-source tables; defaults to `tier`).

Model families (all linear over `router.features`, so scoring needs numpy only):
`soft-logistic` fits P(y) with soft label y = (1 + gain) / 2, which orders prompts by the expected
gain; `win-logistic` fits P(strong right and weak wrong); `ridge` regresses the gain itself.
With `--dev`, each candidate of a small fixed grid is scored by pooled dev APGR and the best is
kept; calibration quantiles come from dev scores of the allowed sources (held out from the fit).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.offline.evaluate import (
    LabelledRow,
    apgr,
    print_report,
    read_rows,
    report,
    routing_curve,
)
from router.offline.inputs import InputError
from router.routing.classify import Calibration, LinearClassifier, Link
from router.routing.features import N_FEATURES, extract

DEFAULT_SOURCES = ("mmlu", "gsm8k", "mt_bench")  # the RouteLLM rows, Apache-2.0


@dataclass(frozen=True)
class Candidate:
    family: str  # "soft-logistic" | "win-logistic" | "ridge"
    strength: float  # C for the logistic families, alpha for ridge

    @property
    def link(self) -> Link:
        return "gain" if self.family == "ridge" else "logistic"

    def name(self) -> str:
        return f"{self.family}({self.strength:g})"


GRID: tuple[Candidate, ...] = (
    Candidate("soft-logistic", 0.3),
    Candidate("soft-logistic", 1.0),
    Candidate("win-logistic", 1.0),
    Candidate("ridge", 3.0),
    Candidate("ridge", 10.0),
)
DEFAULT = GRID[0]


def design_matrix(rows: Sequence[LabelledRow], progress: bool = False) -> Any:
    """Rows' features as a CSR matrix (scipy comes with scikit-learn)."""
    import scipy.sparse as sp  # type: ignore[import-untyped]

    requests = [r.request for r in rows]
    if progress:
        from rich.console import Console
        from rich.progress import track

        requests = list(track(requests, "features", console=Console(stderr=True), transient=True))
    indices: list[int] = []
    values: list[float] = []
    indptr = [0]
    for request in requests:
        features = extract(request)
        indices.extend(features.indices)
        values.extend(features.values)
        indptr.append(len(indices))
    return sp.csr_matrix(
        (np.array(values), np.array(indices, np.int64), np.array(indptr, np.int64)),
        shape=(len(requests), N_FEATURES),
    )


def fit_weights(x: Any, gains: np.ndarray, candidate: Candidate) -> tuple[np.ndarray, float]:
    """Fit one candidate; returns (weights over all features, bias).

    Only the columns some row uses are handed to scikit-learn (an L2 penalty leaves the others
    at zero anyway), which makes fitting a 2^20-bucket model fast.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    used = np.unique(x.indices)
    x = x[:, used]
    weights = np.zeros(N_FEATURES, np.float64)
    if candidate.family == "ridge":
        ridge = Ridge(alpha=candidate.strength, fit_intercept=True)
        ridge.fit(x, gains)
        weights[used] = ridge.coef_
        return weights, float(ridge.intercept_)
    model = LogisticRegression(C=candidate.strength, max_iter=3000, tol=1e-5)
    if candidate.family == "soft-logistic":
        both = _vstack(x, x)
        target = np.r_[np.ones(len(gains)), np.zeros(len(gains))]
        weight = np.r_[(1 + gains) / 2, (1 - gains) / 2]
        keep = weight > 0
        model.fit(both[keep], target[keep], sample_weight=weight[keep])
    elif candidate.family == "win-logistic":
        model.fit(x, (gains > 0).astype(int))
    else:
        raise ValueError(f"unknown family {candidate.family!r}")
    weights[used] = model.coef_[0]
    return weights, float(model.intercept_[0])


def _vstack(top: Any, bottom: Any) -> Any:
    import scipy.sparse as sp

    return sp.vstack([top, bottom]).tocsr()


def fit(
    rows: Sequence[LabelledRow],
    candidate: Candidate = DEFAULT,
    calibration_rows: Sequence[LabelledRow] = (),
    x: Any = None,
) -> LinearClassifier:
    """Fit a classifier on `rows`; calibrate on `calibration_rows` (default: the training rows)."""
    if not rows:
        raise ValueError("no training rows")
    x = design_matrix(rows) if x is None else x
    gains = np.array([r.gain for r in rows], np.float64)
    weights, bias = fit_weights(x, gains, candidate)
    uncalibrated = LinearClassifier(
        weights.astype(np.float32), bias, candidate.link, Calibration((0.0, 1.0))
    )
    calib = calibration_rows or rows
    scores = [uncalibrated.assess(r.request).score for r in calib]
    sources = sorted({r.source for r in rows})
    info: dict[str, str | float] = {
        "model": candidate.name(),
        "train_rows": float(len(rows)),
        "train_sources": ",".join(sources),
        "calibration_rows": float(len(calib)),
    }
    return LinearClassifier(
        uncalibrated.weights, bias, candidate.link, Calibration.from_scores(scores), info
    )


def pooled_apgr(classifier: LinearClassifier, rows: Sequence[LabelledRow]) -> float:
    scores = [classifier.assess(r.request).score for r in rows]
    return apgr(routing_curve(scores, [r.strong for r in rows], [r.weak for r in rows]))


def choose(
    train: Sequence[LabelledRow],
    dev: Sequence[LabelledRow],
    calibration_rows: Sequence[LabelledRow],
    grid: Sequence[Candidate] = GRID,
    log: Any = None,
) -> tuple[LinearClassifier, dict[str, float]]:
    """Fit every candidate on `train`, keep the best by pooled APGR on `dev`."""
    x = design_matrix(train, progress=log is not None)
    best: tuple[float, LinearClassifier] | None = None
    figures: dict[str, float] = {}
    for candidate in grid:
        classifier = fit(train, candidate, calibration_rows, x=x)
        figures[candidate.name()] = value = pooled_apgr(classifier, dev)
        if log is not None:
            log.print(f"{candidate.name():>20}  dev APGR {value:.4f}")
        if best is None or value > best[0] + 1e-9:
            best = (value, classifier)
    assert best is not None
    return best[1], figures


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training JSONL")
    parser.add_argument("--dev", type=Path, default=None, help="dev JSONL: choose + calibrate")
    parser.add_argument("--out", type=Path, required=True, help="artifact to write (.npz)")
    parser.add_argument(
        "--sources",
        default=",".join(DEFAULT_SOURCES),
        help=f"comma-separated sources to fit on (default: {','.join(DEFAULT_SOURCES)}, the "
        "routing data whose licences allow it; 'all' for every source). Rows of flashpro's own "
        "traffic (decision log, feedback) are always kept",
    )


def _allowed(rows: Sequence[LabelledRow], sources: str) -> list[LabelledRow]:
    if sources == "all":
        return list(rows)
    keep = {s.strip() for s in sources.split(",")}
    return [r for r in rows if r.traffic or r.source in keep]


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"reading {args.data} ..."):  # shown at once, on a terminal only
        rows = read_rows(args.data)
    train = _allowed(rows, args.sources)
    if not train:
        found = ", ".join(sorted({r.source for r in rows})) or "none"
        raise InputError(
            f"{args.data}: no rows left after --sources {args.sources} (sources found: {found})"
        )
    console.print(f"{args.data}: {len(train)} of {len(rows)} rows kept (--sources {args.sources})")
    if args.dev is None:
        console.print(f"fitting {DEFAULT.name()} ...")
        classifier = fit(train, DEFAULT)
        dev: list[LabelledRow] = []
    else:
        with console.status(f"reading {args.dev} ..."):
            dev = read_rows(args.dev)
        calib = _allowed(dev, args.sources) or dev
        console.print(f"fitting {len(GRID)} candidates, each scored on {len(dev)} dev rows")
        classifier, _ = choose(train, dev, calib, log=console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    classifier.save(args.out)
    size = args.out.stat().st_size
    console.print(
        f"{classifier.info['model']} fitted on {len(train)} rows "
        f"({classifier.info['train_sources']}) -> {args.out} ({math.ceil(size / 1024)} KiB)"
    )
    if dev:
        scores = [classifier.assess(r.request).score for r in dev]
        print_report(report(dev, scores), file=sys.stderr)
    return 0
