"""Fit the classifier's two heads and their blend, and write the artifact; the `train` command.
Reads data, writes a file.

The only module that uses scikit-learn, and only inside the fitting functions (imported there,
so the CLI and the server never load it). Deterministic: same data, same artifact.

Inputs:

* routing rows (`--data`, JSON Lines): `{"id", "source", "prompt", "strong_correct",
  "weak_correct", "meta"}` as in `shared/data/routing`, or the proxy's decision log joined with
  feedback (see `router.offline.evaluate`). Their strong-minus-weak gain (lenient GSM8K grading
  where present) trains the gain head. MMLU, GSM8K and MT-Bench rows also place their source on
  the difficulty scale (knowledge questions 0.3, grade-school word problems 0.4, chat 0.3), plus
  0.1 when the weak model got them wrong.
* difficulty rows (`--difficulty FILE ...`, see `router.offline.difficulty`): the difficulty
  head's targets on the absolute scale; families without an outcome pair enter the gain head at a
  constant assumed gain, so that it stays flat across them.

Each file is split by row id (`split_of`): the train part is fitted; routing rows whose id falls
in the test part, and the dev part of the difficulty files, choose the blend (a small fixed grid,
by routing APGR plus mean within-family Spearman) and calibrate the blended score. The
calibration set stands for chat traffic: each family (MMLU, GSM8K, MT-Bench, real chat prompts,
everyday requests) weighs the same, so `shares:` in a policy mean shares of such a mix.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.offline.difficulty import (
    TRAFFIC_SOURCES,
    DifficultyRow,
    family_reports,
    print_family_reports,
    read_difficulty,
    spearman,
    split_of,
)
from router.offline.evaluate import (
    LabelledRow,
    apgr,
    print_report,
    read_rows,
    report,
    routing_curve,
)
from router.offline.inputs import InputError
from router.routing.classify import Blend, Calibration, DifficultyClassifier, Head
from router.routing.features import DENSE_NAMES, HASH_BUCKETS, N_DENSE, N_FEATURES, extract
from router.schemas import ChatRequest

DEFAULT_SOURCES = ("mmlu", "gsm8k", "mt_bench")  # the RouteLLM rows, Apache-2.0
# Where a routing source sits on the difficulty scale, before the weak model's outcome.
_ROUTING_DIFFICULTY = {"mmlu": 0.3, "gsm8k": 0.4, "mt_bench": 0.3}
_WEAK_WRONG = 0.1  # added when the weak model got the prompt wrong
DIFFICULTY_ALPHA = 1.0  # ridge penalty of the difficulty head
GAIN_C = 1.0  # inverse penalty of the gain head's logistic regression
MIN_CALIBRATION_ROWS = 20  # a traffic family with fewer choose rows stays out of calibration
MIN_ROWS_PER_BUCKET = 2  # hashed buckets seen in fewer training rows stay at zero weight
ANCHOR_SOURCES = frozenset({"everyday", "expert"})
ANCHOR_WEIGHT = 4.0  # how much more an anchor row weighs than a row of a family of its size
# Added to the named cues' fitted weights (difficulty per unit of the cue's feature,
# log1p(count)/3): what a request asks for that the public difficulty data barely covers
# (proofs, concurrency, systems design, debugging) or covers only at the easy end (chit-chat).
DIFFICULTY_PRIOR = {
    "proof": 0.2,
    "concurrency": 0.25,
    "design": 0.15,
    "debug": 0.1,
    "bullets": 0.1,
    "simple_task": -0.1,
    "chit_chat": -0.2,
    "creative": -0.05,
}
KNEES = (0.45, 0.5, 0.55)
SLOPES = (10.0, 20.0, 40.0)
LOW_SLOPES = (0.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class Example:
    """One training prompt with what each head learns from it (None: that head skips it)."""

    source: str
    request: ChatRequest
    split: str  # "fit", "choose" or "unused"
    difficulty: float | None
    gain: float | None
    strong: float | None = None  # published outcomes, for APGR while choosing
    weak: float | None = None
    label: float | None = None  # level or difficulty, for Spearman while choosing


def routing_example(row: LabelledRow) -> Example:
    difficulty = None
    if row.source in _ROUTING_DIFFICULTY:
        difficulty = _ROUTING_DIFFICULTY[row.source] + _WEAK_WRONG * (1.0 - row.weak)
    split = "choose" if split_of("routing:" + row.id) == "test" else "fit"
    return Example(row.source, row.request, split, difficulty, row.gain, row.strong, row.weak)


def difficulty_example(row: DifficultyRow) -> Example:
    split = {"train": "fit", "dev": "choose"}.get(row.split, "unused")
    label = row.level if row.level is not None else row.difficulty
    return Example(row.source, row.request, split, row.target(), row.assumed_gain(), label=label)


def design_matrix(requests: Sequence[ChatRequest], progress: bool = False) -> Any:
    """Requests' features as a CSR matrix (scipy comes with scikit-learn)."""
    import scipy.sparse as sp  # type: ignore[import-untyped]

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


def _columns(x: Any) -> np.ndarray:
    """Hashed buckets seen in enough rows, then every dense feature."""
    seen = np.bincount(x.indices, minlength=N_FEATURES)
    buckets = np.flatnonzero(seen[:HASH_BUCKETS] >= MIN_ROWS_PER_BUCKET)
    return np.asarray(np.r_[buckets, np.arange(HASH_BUCKETS, N_FEATURES)], np.int64)


def _standardise(x: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """Scale the dense columns (the last N_DENSE) to unit variance; returns (x, mean, scale)."""
    import scipy.sparse as sp

    dense = x[:, -N_DENSE:].toarray()
    mean, scale = dense.mean(0), dense.std(0) + 1e-6
    return sp.hstack([x[:, :-N_DENSE], sp.csr_matrix((dense - mean) / scale)]).tocsr(), mean, scale


def _unscale(
    coef: np.ndarray, intercept: float, columns: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> Head:
    """A head over raw features from coefficients fitted on standardised dense columns."""
    weights = np.zeros(N_FEATURES, np.float64)
    dense = coef[-N_DENSE:] / scale
    weights[columns[:-N_DENSE]] = coef[:-N_DENSE]
    weights[HASH_BUCKETS:] = dense
    return Head(weights.astype(np.float32), float(intercept - dense @ mean))


def _family_weights(sources: Sequence[str]) -> np.ndarray:
    """Each family weighs the square root of its size: big families do not drown small ones.

    The anchor sets weigh more: they are small and they alone hold the ends of the scale.
    """
    names, inverse, counts = np.unique(np.asarray(sources), return_inverse=True, return_counts=True)
    boost = np.array([ANCHOR_WEIGHT if name in ANCHOR_SOURCES else 1.0 for name in names])
    weights = boost[inverse] / np.sqrt(counts[inverse])
    return np.asarray(weights * len(weights) / weights.sum())


def _prior() -> np.ndarray:
    return np.array([DIFFICULTY_PRIOR.get(name, 0.0) for name in DENSE_NAMES], float)


def fit_difficulty(x: Any, targets: np.ndarray, sources: Sequence[str]) -> Head:
    """Ridge regression onto the absolute difficulty scale, families balanced.

    `DIFFICULTY_PRIOR` is then added to the named cues' weights: the public data holds almost no
    request where these cues mark hard work (it holds "design" and "system" in knowledge
    questions), so without it a systems-design or concurrency request would read as a knowledge
    question.
    """
    from sklearn.linear_model import Ridge

    if len(targets) == 0:
        return Head(np.zeros(N_FEATURES, np.float32), 0.3)
    columns = _columns(x)
    xs, mean, scale = _standardise(x[:, columns])
    model = Ridge(alpha=DIFFICULTY_ALPHA)
    model.fit(xs, targets, sample_weight=_family_weights(sources))
    head = _unscale(model.coef_, float(model.intercept_), columns, mean, scale)
    weights = head.weights.astype(np.float64)
    weights[HASH_BUCKETS:] += _prior()
    return Head(weights.astype(np.float32), head.bias)


def fit_gain(x: Any, gains: np.ndarray) -> Head:
    """Logistic regression on soft labels (1 + gain) / 2: orders prompts by expected gain."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    columns = _columns(x)
    xs, mean, scale = _standardise(x[:, columns])
    both = sp.vstack([xs, xs]).tocsr()
    target = np.r_[np.ones(len(gains)), np.zeros(len(gains))]
    weight = np.r_[(1 + gains) / 2, (1 - gains) / 2]
    keep = weight > 0
    model = LogisticRegression(C=GAIN_C, max_iter=3000, tol=1e-5)
    model.fit(both[keep], target[keep], sample_weight=weight[keep])
    return _unscale(model.coef_[0], float(model.intercept_[0]), columns, mean, scale)


def _margins(head: Head, x: Any) -> np.ndarray:
    return np.asarray(x @ head.weights.astype(np.float64) + head.bias).ravel()


def _objective(raw: np.ndarray, examples: Sequence[Example]) -> float:
    """Routing APGR of the choose rows plus the mean within-family Spearman."""
    routed = [i for i, e in enumerate(examples) if e.strong is not None and e.weak is not None]
    total = 0.0
    if routed:
        strong = [float(examples[i].strong or 0.0) for i in routed]
        weak = [float(examples[i].weak or 0.0) for i in routed]
        curve = routing_curve(raw[routed].tolist(), strong, weak)
        if not np.isnan(curve.pgr).any():
            total += apgr(curve)
    families: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if e.label is not None:
            families.setdefault(e.source, []).append(i)
    figures = [
        spearman(raw[idx].tolist(), [float(examples[i].label or 0.0) for i in idx])
        for idx in families.values()
    ]
    figures = [f for f in figures if not math.isnan(f)]
    return total + (float(np.mean(figures)) if figures else 0.0)


def choose_blend(
    difficulty: np.ndarray, gain: np.ndarray, examples: Sequence[Example], gain_fit: np.ndarray
) -> tuple[Blend, float]:
    """The grid's best blend on the choose rows; gain standardised on the fitted rows."""
    mean, std = float(gain_fit.mean()), float(gain_fit.std() or 1.0)
    best: tuple[float, Blend] | None = None
    for knee in KNEES:
        for slope in SLOPES:
            for low in LOW_SLOPES:
                blend = Blend(mean, std, knee, slope, low)
                raw = np.array([blend.raw(d, g) for d, g in zip(difficulty, gain, strict=True)])
                value = _objective(raw, examples)
                if best is None or value > best[0] + 1e-9:
                    best = (value, blend)
    assert best is not None
    return best[1], best[0]


def _calibration_weights(examples: Sequence[Example]) -> np.ndarray:
    """Every traffic family weighs the same in total."""
    sources = [e.source for e in examples]
    counts = {s: sources.count(s) for s in set(sources)}
    return np.array([1.0 / counts[s] for s in sources])


def fit(
    routing: Sequence[LabelledRow],
    difficulty: Sequence[DifficultyRow] = (),
    sources: Sequence[str] = DEFAULT_SOURCES,
    log: Any = None,
) -> DifficultyClassifier:
    """Fit both heads on the fit rows, choose the blend and calibrate on the choose rows."""
    examples = [routing_example(r) for r in routing] + [difficulty_example(r) for r in difficulty]
    examples = [e for e in examples if e.split != "unused"]
    if not any(e.split == "fit" and e.gain is not None for e in examples):
        raise ValueError("no training rows with a gain")
    x = design_matrix([e.request for e in examples], progress=log is not None)
    fit_rows = [i for i, e in enumerate(examples) if e.split == "fit"]
    d_rows = [i for i in fit_rows if examples[i].difficulty is not None]
    g_rows = [i for i in fit_rows if examples[i].gain is not None]
    d_head = fit_difficulty(
        x[d_rows],
        np.array([examples[i].difficulty for i in d_rows], float),
        [examples[i].source for i in d_rows],
    )
    g_head = fit_gain(x[g_rows], np.array([examples[i].gain for i in g_rows], float))
    choose_rows = [i for i, e in enumerate(examples) if e.split == "choose"] or fit_rows
    chosen = [examples[i] for i in choose_rows]
    d_all, g_all = _margins(d_head, x), _margins(g_head, x)
    routing_fit = [i for i in g_rows if examples[i].strong is not None]
    blend, value = choose_blend(
        d_all[choose_rows], g_all[choose_rows], chosen, g_all[routing_fit or g_rows]
    )
    traffic = [
        i
        for i in choose_rows
        if examples[i].source in TRAFFIC_SOURCES or examples[i].source in sources
    ]
    counts = Counter(examples[i].source for i in traffic)
    traffic = [i for i in traffic if counts[examples[i].source] >= MIN_CALIBRATION_ROWS]
    traffic = traffic or choose_rows
    raw = np.array([blend.raw(d_all[i], g_all[i]) for i in traffic])
    weights = _calibration_weights([examples[i] for i in traffic])
    spread = Calibration.from_scores(raw.tolist(), weights=weights.tolist())
    low, center, high = (spread.threshold_for_share(s) for s in (0.9, 0.5, 0.1))
    blend = Blend(
        blend.gain_mean,
        blend.gain_std,
        blend.knee,
        blend.slope,
        blend.low_slope,
        float(center),
        float(max(high - low, 1e-6) / (2 * math.log(9.0))),
    )
    scores = [blend.score(d_all[i], g_all[i]) for i in traffic]
    dense = x[traffic][:, HASH_BUCKETS:].toarray()
    reference = tuple(float(v) for v in np.average(dense, axis=0, weights=weights))
    info: dict[str, str | float] = {
        "model": f"difficulty ridge({DIFFICULTY_ALPHA:g}) + gain soft-logistic({GAIN_C:g})",
        "blend": f"knee {blend.knee:g}, slope {blend.slope:g}, low slope {blend.low_slope:g}",
        "choose_objective": round(value, 4),
        "train_rows": float(len(fit_rows)),
        "train_sources": ",".join(sorted({examples[i].source for i in fit_rows})),
        "calibration_rows": float(len(traffic)),
        "calibration_sources": ",".join(sorted({examples[i].source for i in traffic})),
    }
    if log is not None:
        log.print(f"blend: {info['blend']} (choose objective {value:.4f})")
    return DifficultyClassifier(
        d_head,
        g_head,
        blend,
        Calibration.from_scores(scores, weights=weights.tolist()),
        reference,
        info,
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="routing JSONL (outcome pairs)")
    parser.add_argument(
        "--difficulty",
        type=Path,
        nargs="*",
        default=[],
        help="JSONL files of prompts with a known difficulty (level, difficulty or hard)",
    )
    parser.add_argument(
        "--dev", type=Path, default=None, help="routing JSONL to report on afterwards (not fitted)"
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact to write (.npz)")
    parser.add_argument(
        "--sources",
        default=",".join(DEFAULT_SOURCES),
        help=f"comma-separated routing sources to fit on (default: {','.join(DEFAULT_SOURCES)}, "
        "the routing data whose licences allow it; 'all' for every source). Rows of flashpro's "
        "own traffic (decision log, feedback) are always kept",
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
        difficulty = read_difficulty(args.difficulty)
    routing = _allowed(rows, args.sources)
    if not routing:
        found = ", ".join(sorted({r.source for r in rows})) or "none"
        raise InputError(
            f"{args.data}: no rows left after --sources {args.sources} (sources found: {found})"
        )
    console.print(
        f"{args.data}: {len(routing)} of {len(rows)} rows kept (--sources {args.sources})"
    )
    if difficulty:
        console.print(f"difficulty files: {len(difficulty)} rows")
    sources = sorted({r.source for r in routing})
    classifier = fit(routing, difficulty, sources, log=console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    classifier.save(args.out)
    size = args.out.stat().st_size
    console.print(
        f"{classifier.info['model']} fitted on {int(float(classifier.info['train_rows']))} rows "
        f"({classifier.info['train_sources']}) -> {args.out} ({math.ceil(size / 1024)} KiB)"
    )
    if args.dev is not None:
        dev = read_rows(args.dev)
        scores = [classifier.assess(r.request).score for r in dev]
        print_report(report(dev, scores), file=sys.stderr)
    held_out = [r for r in difficulty if r.split == "test"]
    if held_out:
        scores = [classifier.assess(r.request).score for r in held_out]
        print_family_reports(family_reports(held_out, scores), file=sys.stderr)
    return 0
