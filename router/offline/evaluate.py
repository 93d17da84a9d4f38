"""Measure routing quality offline (APGR, CPT) and time the classifier; the eval/score/bench commands.

The metrics are pure and follow RouteLLM: rank rows by score, send the top share `s` to the
strong model, `q(s)` = mean strong outcome over those plus weak outcome over the rest,
`PGR(s) = (q(s) - q_weak) / (q_strong - q_weak)`, APGR = area under PGR over s in [0, 1]
(trapezoids at every row), CPT(x) = smallest strong share with PGR >= x. Tied scores are
ranked in expectation (the curve is linear across a tie), so a constant score is exactly the
random router (APGR 0.5). Reading data files, printing tables and plotting are the I/O here.

Data rows are JSON Lines in either the routing format
`{"id", "source", "prompt", "strong_correct", "weak_correct", "meta"}` or the decision-log
format documented in `router.train`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.observe.decisions import join
from router.offline.difficulty import family_reports, print_family_reports, read_difficulty
from router.offline.inputs import (
    load_classifier_file,
    read_jsonl,
    require_directory,
    require_matplotlib,
    row_error,
)
from router.routing.classify import Classifier
from router.schemas import ChatRequest

TARGETS: Mapping[str, tuple[float, float]] = {  # source: (min APGR, max CPT(50%))
    "overall": (0.64, 1.0),
    "mmlu": (0.603, 0.354),
    "gsm8k": (0.0, 0.40),
}
_BENCH_TEXT = (
    "please explain how the cache invalidation works when two workers update the same "
    "record and the network drops a message then write a short python function that "
    "retries with backoff and prove it terminates what is 17 * 23 + 4 ?"
)


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """One prompt with the outcomes of the strong and the weak model (1.0 = right)."""

    id: str
    source: str
    request: ChatRequest
    strong: float  # evaluation labels: as published (RouteLLM's for GSM8K)
    weak: float
    gain: float  # training label, strong - weak in [-1, 1]; lenient GSM8K grading where present
    traffic: bool = False  # from flashpro's own traffic (decision log, feedback), not routing data


def request_from_json(obj: Mapping[str, Any]) -> ChatRequest:
    """The request a row stands for: a single user turn for `prompt`, else the logged body."""
    if "prompt" in obj:
        return ChatRequest(model="auto", messages=[{"role": "user", "content": obj["prompt"]}])
    body = obj.get("request", obj)
    return ChatRequest.model_validate({"model": "auto", **body})


def _log_gain(obj: Mapping[str, Any]) -> float:
    if "label" in obj:
        return float(obj["label"])
    feedback = obj.get("feedback") or {}
    if feedback.get("strong_better"):
        return 1.0
    if feedback.get("weak_better"):
        return -1.0
    if "strong_better" in feedback or "weak_better" in feedback:
        return 0.0
    raise ValueError(f"row {obj.get('id')!r} has no label: need 'label' or 'feedback'")


def row_from_json(obj: Mapping[str, Any], index: int = 0) -> LabelledRow:
    request = request_from_json(obj)
    row_id = str(obj.get("id", index))
    if "strong_correct" in obj:
        strong, weak = float(obj["strong_correct"]), float(obj["weak_correct"])
        meta = obj.get("meta") or {}
        lenient_s = meta.get("strong_correct_lenient", strong)
        lenient_w = meta.get("weak_correct_lenient", weak)
        source = str(obj.get("source", "unknown"))
        return LabelledRow(row_id, source, request, strong, weak, float(lenient_s - lenient_w))
    gain = min(max(_log_gain(obj), -1.0), 1.0)
    source = str(obj.get("source", obj.get("tier", "traffic")))
    strong_log, weak_log = min(1.0, 1.0 + gain), min(1.0, 1.0 - gain)
    return LabelledRow(row_id, source, request, strong_log, weak_log, gain, traffic=True)


def read_objects(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a data file (one problem raises `InputError` naming its line)."""
    return [obj for _, obj in read_jsonl(path)]


def read_rows(path: Path) -> list[LabelledRow]:
    """Labelled rows; a decision log's feedback lines are joined to their decisions first.
    A row that lacks what a label needs raises `InputError` naming its line (or its id)."""
    lines: dict[int, int] = {}  # id() of a parsed object -> its line number

    def numbered() -> Iterator[dict[str, Any]]:
        for number, obj in read_jsonl(path):
            lines[id(obj)] = number
            yield obj

    rows = []
    for i, obj in enumerate(join(numbered())):
        try:
            rows.append(row_from_json(obj, i))
        except (KeyError, TypeError, ValueError) as exc:
            number = lines.get(id(obj))
            where = f"{path}:{number}" if number else f"{path} (row {obj.get('id', i)!r})"
            raise row_error(where, exc) from None
    return rows


def requests_of(path: Path, objs: Sequence[Mapping[str, Any]]) -> list[ChatRequest]:
    """The chat request of each row of `path` (rows in file order, blank lines skipped)."""
    requests = []
    for i, obj in enumerate(objs):
        try:
            requests.append(request_from_json(obj))
        except (KeyError, TypeError, ValueError) as exc:
            raise row_error(f"{path} (row {i + 1})", exc) from None
    return requests


@dataclass(frozen=True)
class Curve:
    """PGR and quality at strong shares 0, 1/n, ..., 1."""

    shares: np.ndarray
    pgr: np.ndarray
    quality: np.ndarray


def routing_curve(scores: Sequence[float], strong: Sequence[float], weak: Sequence[float]) -> Curve:
    s = np.asarray(scores, float)
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    gains = (np.asarray(strong, float) - np.asarray(weak, float))[order]
    n = len(gains)
    cum = np.concatenate([[0.0], np.cumsum(gains)])
    breaks = np.concatenate([[0], np.flatnonzero(np.diff(ranked)) + 1, [n]])
    k = np.arange(n + 1)
    cum = np.interp(k, breaks, cum[breaks])  # expected value over orders of tied rows
    q_weak = float(np.mean(weak)) if n else 0.0
    quality = q_weak + cum / max(n, 1)
    total = cum[-1] if n else 0.0
    pgr = cum / total if total > 0 else np.full(n + 1, np.nan)
    return Curve(k / max(n, 1), pgr, quality)


def apgr(curve: Curve) -> float:
    return float(np.trapezoid(curve.pgr, curve.shares))


def cpt(curve: Curve, target: float) -> float:
    """Smallest strong share whose PGR reaches `target` (nan when the gap is not positive)."""
    hit = np.flatnonzero(curve.pgr >= target - 1e-12)
    return float(curve.shares[hit[0]]) if hit.size else float("nan")


@dataclass(frozen=True)
class RouterFigures:
    apgr: float
    cpt50: float
    cpt80: float

    @classmethod
    def of(cls, curve: Curve) -> RouterFigures:
        return cls(apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8))


@dataclass(frozen=True)
class SourceReport:
    source: str
    rows: int
    q_strong: float
    q_weak: float
    model: RouterFigures
    length: RouterFigures
    random: RouterFigures

    def meets_targets(self) -> bool | None:
        if self.source not in TARGETS:
            return None
        min_apgr, max_cpt = TARGETS[self.source]
        return self.model.apgr > min_apgr and self.model.cpt50 <= max_cpt


def prompt_chars(request: ChatRequest) -> int:
    return sum(len(m.text()) for m in request.messages)


def curves(rows: Sequence[LabelledRow], scores: Sequence[float]) -> dict[str, Curve]:
    strong, weak = [r.strong for r in rows], [r.weak for r in rows]
    return {
        "model": routing_curve(scores, strong, weak),
        "length": routing_curve([prompt_chars(r.request) for r in rows], strong, weak),
        "random": routing_curve([0.0] * len(rows), strong, weak),
    }


def report(rows: Sequence[LabelledRow], scores: Sequence[float]) -> list[SourceReport]:
    """Figures pooled over all rows ("overall") and for each source."""
    groups: dict[str, list[int]] = {"overall": list(range(len(rows)))}
    for i, row in enumerate(rows):
        groups.setdefault(row.source, []).append(i)
    out = []
    for source, idx in groups.items():
        sub = [rows[i] for i in idx]
        c = curves(sub, [scores[i] for i in idx])
        out.append(
            SourceReport(
                source,
                len(sub),
                float(np.mean([r.strong for r in sub])),
                float(np.mean([r.weak for r in sub])),
                RouterFigures.of(c["model"]),
                RouterFigures.of(c["length"]),
                RouterFigures.of(c["random"]),
            )
        )
    return out


def score_all(
    classifier: Classifier, requests: Sequence[ChatRequest], label: str = "scoring"
) -> list[float]:
    from rich.progress import track

    return [
        classifier.assess(r).score
        for r in track(requests, description=label, console=_stderr(), transient=True)
    ]


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def print_report(reports: Sequence[SourceReport], file: Any = None) -> None:
    from rich.table import Table

    from router.offline.terminal import table_console

    table = Table(
        title="routing quality: model vs prompt-length baseline (random: APGR 0.5, CPT(x) = x)"
    )
    for column in ("source", "rows", "APGR", "len", "CPT50", "len", "CPT80", "len", "target"):
        table.add_column(column, justify="left" if column == "source" else "right", no_wrap=True)
    for r in reports:
        met = r.meets_targets()
        table.add_row(
            r.source,
            str(r.rows),
            f"{r.model.apgr:.3f}",
            f"{r.length.apgr:.3f}",
            f"{r.model.cpt50:.1%}",
            f"{r.length.cpt50:.1%}",
            f"{r.model.cpt80:.1%}",
            f"{r.length.cpt80:.1%}",
            "-" if met is None else ("met" if met else "MISSED"),
        )
    table_console(file=file).print(table)


def plot_curves(rows: Sequence[LabelledRow], scores: Sequence[float], path: Path) -> None:
    """Quality against strong share, model beside the baselines, overall and per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[int]] = {"overall": list(range(len(rows)))}
    for i, row in enumerate(rows):
        groups.setdefault(row.source, []).append(i)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), squeeze=False)
    for ax, (source, idx) in zip(axes[0], groups.items(), strict=True):
        sub = [rows[i] for i in idx]
        for name, curve in curves(sub, [scores[i] for i in idx]).items():
            ax.plot(curve.shares, curve.quality, label=f"{name} (APGR {apgr(curve):.2f})")
        ax.set_title(f"{source} ({len(sub)})")
        ax.set_xlabel("share routed to strong")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("quality")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL rows")
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: shipped)")
    parser.add_argument("--plot", type=Path, default=None, help="write quality curves (PNG)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--difficulty",
        type=Path,
        nargs="*",
        default=[],
        help="JSONL files of prompts with a known difficulty: Spearman or AUC per family",
    )
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="score only the test part of the difficulty files (the 20%% `train` never sees)",
    )


def run_eval(args: argparse.Namespace) -> int:
    if args.plot is not None:  # before the scoring, not after it
        require_matplotlib()
        require_directory(args.plot)
    rows = read_rows(args.data)
    hard = read_difficulty(args.difficulty)
    if args.holdout:
        hard = [r for r in hard if r.split == "test"]
    classifier = load_classifier_file(args.model)
    scores = score_all(classifier, [r.request for r in rows])
    reports = report(rows, scores)
    families = family_reports(hard, score_all(classifier, [r.request for r in hard]))
    if args.plot is not None:
        plot_curves(rows, scores, args.plot)
    if args.json:
        payload = {
            "routing": [{**asdict(r), "meets_targets": r.meets_targets()} for r in reports],
            "difficulty": [{**asdict(f), "meets_target": f.meets_target()} for f in families],
        }
        print(json.dumps(payload, indent=2))
    else:
        print_report(reports)
        if families:
            print_family_reports(families)
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="JSONL rows to score")
    parser.add_argument("--out", type=Path, required=True, help='JSONL of {"id", "score"}')
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: shipped)")


def run_score(args: argparse.Namespace) -> int:
    require_directory(args.out)
    objs = read_objects(args.data)
    requests = requests_of(args.data, objs)
    classifier = load_classifier_file(args.model)
    scores = score_all(classifier, requests)
    with args.out.open("w", encoding="utf-8") as out:
        for i, (obj, score) in enumerate(zip(objs, scores, strict=True)):
            out.write(json.dumps({"id": obj.get("id", i), "score": score}) + "\n")
    _stderr().print(f"scored {len(scores)} rows -> {args.out}")
    return 0


def typical_requests(count: int = 400) -> list[ChatRequest]:
    """Deterministic chat requests of everyday sizes: a system prompt and 1-3 turns."""
    words = _BENCH_TEXT.split()
    out = []
    for i in range(count):
        length = 8 + (i * 37) % 160
        text = " ".join(words[(i + j) % len(words)] for j in range(length))
        messages: list[dict[str, str]] = [{"role": "system", "content": "You are helpful."}]
        if i % 3 == 0:
            messages += [
                {"role": "user", "content": text[:200]},
                {"role": "assistant", "content": "ok"},
            ]
        messages.append({"role": "user", "content": text})
        out.append(ChatRequest(model="auto", messages=messages))
    return out


def time_assess(
    assess: Callable[[ChatRequest], object], requests: Sequence[ChatRequest], cpu: bool = False
) -> np.ndarray:
    """Microseconds per call, one entry per request (after one warm-up call).

    `cpu=True` counts this thread's CPU time, which leaves out time the OS gave to other
    processes: the figure to trust on a busy machine.
    """
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    assess(requests[0])
    out = np.empty(len(requests))
    for i, request in enumerate(requests):
        start = clock()
        assess(request)
        out[i] = (clock() - start) / 1000.0
    return out


def huge_request(megabytes: float = 4.0) -> ChatRequest:
    chunk = "The integral of x^2 from 0 to 3 is 9. Prove the claim and discuss the code. "
    text = chunk * int(megabytes * 1_000_000 / len(chunk))
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}])


def add_bench_classifier_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: shipped)")
    parser.add_argument("--data", type=Path, default=None, help="JSONL prompts (default: built-in)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the requests")


def run_bench_classifier(args: argparse.Namespace) -> int:
    from rich.table import Table

    from router.offline.terminal import table_console

    classifier = load_classifier_file(args.model)
    if args.data is not None:
        requests = requests_of(args.data, read_objects(args.data))
    else:
        requests = typical_requests()
    huge = [huge_request()] * 20
    runs = {
        (name, clock): np.concatenate(
            [time_assess(classifier.assess, reqs, clock == "cpu") for _ in range(rounds)]
        )
        for name, reqs, rounds in (("typical", requests, args.rounds), ("4 MB prompt", huge, 1))
        for clock in ("wall", "cpu")
    }
    table = Table(title="assess() time, microseconds")
    for column in ("requests", "clock", "calls", "mean", "p50", "p99", "max"):
        table.add_column(column, justify="right")
    for (name, clock), t in runs.items():
        figures = (t.mean(), *np.percentile(t, [50, 99]), t.max())
        table.add_row(name, clock, str(t.size), *(f"{v:.0f}" for v in figures))
    table_console().print(table)
    for clock in ("wall", "cpu"):
        t = runs[("typical", clock)]
        ok = t.mean() <= 200 and np.percentile(t, 99) <= 1000
        print(f"{clock}: mean <= 200 us and p99 <= 1000 us: {'met' if ok else 'MISSED'}")
    return 0
