"""Prompts whose difficulty is known: reading, the deterministic split, the difficulty scale and
the generalisation report of `flashpro eval`. Reading data files and printing tables are the I/O.

Rows are JSON Lines with an `id`, a `source`, a `prompt` and one label:
`level` (an ordinal such as MATH's 1-5 or LeetCode's 1-3), `difficulty` (a number in [0, 1]),
or `hard` (0/1). Every file is split by the SHA-256 of each row's id: 60% train (fitted), 20% dev
(used to choose), 20% test (reported); `--holdout` reports on the test part only.

The difficulty head is fitted on one absolute scale (`target`): everyday requests 0.05, knowledge
questions about 0.3, an easy coding or competition-math problem 0.5, a medium one 0.7, a hard one
0.9, proofs and expert work 0.95. Levels are not comparable across families, so the report scores
each family on its own: Spearman against levels, AUC where the label is binary (and for
`difficulty`, the top third against the bottom third), beside the prompt-length baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.offline.inputs import read_jsonl, row_error
from router.schemas import ChatRequest

# Where each known family sits on the absolute scale, and the target of the report.
_LEVEL_SCALE: Mapping[str, Mapping[int, float]] = {
    "math_train": {1: 0.55, 2: 0.65, 3: 0.75, 4: 0.85, 5: 0.95},
    "math": {1: 0.55, 2: 0.65, 3: 0.75, 4: 0.85, 5: 0.95},
    "leetcode": {1: 0.5, 2: 0.7, 3: 0.9},
}
_DIFFICULTY_SCALE: Mapping[str, tuple[float, float]] = {  # target = a + b * difficulty
    "arena_bench": (0.1, 0.9),
}
# Strong-minus-weak gain assumed for families without an outcome pair, so that the gain head
# stays flat across them (about GPT-4 Turbo's published margin over Mixtral on each benchmark).
_ASSUMED_GAIN: Mapping[str, float] = {
    "math_train": 0.35,
    "math": 0.35,
    "leetcode": 0.3,
    "everyday": 0.0,
    "expert": 0.4,
}
TARGETS: Mapping[str, tuple[str, float]] = {  # source: (metric, minimum)
    "math_train": ("spearman", 0.45),
    "math": ("spearman", 0.45),
    "leetcode": ("spearman", 0.35),
    "arena_bench": ("auc", 0.75),
}
# Families that stand for chat traffic in the calibration set, beside the routing sources:
# real chat prompts and everyday requests. Competition math and coding problem sets are left out
# (they are a small part of chat traffic; counted like the others they alone would fill the top
# third), and so are anchors such as `expert`.
TRAFFIC_SOURCES = frozenset({"arena_bench", "everyday"})


def split_of(key: str) -> str:
    """ "train" (60%), "dev" (20%) or "test" (20%), from the SHA-256 of `key`."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "train" if fraction < 0.6 else ("dev" if fraction < 0.8 else "test")


@dataclass(frozen=True, slots=True)
class DifficultyRow:
    """One prompt with a difficulty label."""

    id: str
    source: str
    request: ChatRequest
    level: float | None = None
    difficulty: float | None = None
    hard: bool | None = None
    gain: float | None = None  # strong - weak outcome, where the row has both

    @property
    def split(self) -> str:
        return split_of(self.id)

    def target(self) -> float | None:
        """Where the row sits on the absolute difficulty scale (None: not known)."""
        if self.level is not None and self.source in _LEVEL_SCALE:
            return _LEVEL_SCALE[self.source].get(int(self.level))
        if self.difficulty is not None:
            a, b = _DIFFICULTY_SCALE.get(self.source, (0.0, 1.0))
            return a + b * self.difficulty
        return None

    def assumed_gain(self) -> float | None:
        """The gain the gain head is fitted to for this row (None: the row is left out)."""
        return self.gain if self.gain is not None else _ASSUMED_GAIN.get(self.source)


def difficulty_row(obj: Mapping[str, Any]) -> DifficultyRow:
    request = ChatRequest(model="auto", messages=[{"role": "user", "content": obj["prompt"]}])
    gain = None
    if "strong_correct" in obj and "weak_correct" in obj:
        gain = float(obj["strong_correct"]) - float(obj["weak_correct"])
    hard = obj.get("hard")
    return DifficultyRow(
        str(obj["id"]),
        str(obj.get("source", "unknown")),
        request,
        float(obj["level"]) if obj.get("level") is not None else None,
        float(obj["difficulty"]) if obj.get("difficulty") is not None else None,
        bool(hard) if hard is not None else None,
        gain,
    )


def read_difficulty(paths: Iterable[Path]) -> list[DifficultyRow]:
    """Rows of every file (one problem raises `InputError` naming its file and line)."""
    rows = []
    for path in paths:
        for number, obj in read_jsonl(path):
            try:
                rows.append(difficulty_row(obj))
            except (KeyError, TypeError, ValueError) as exc:
                raise row_error(f"{path}:{number}", exc) from None
    return rows


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr  # type: ignore[import-untyped]

    if len(x) < 3 or len(set(y)) < 2 or len(set(x)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve; ties count half (Mann-Whitney)."""
    s = np.asarray(scores, float)
    p = np.asarray(positive, bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if not n_pos or not n_neg:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class FamilyReport:
    """How well a score orders one family's prompts, beside prompt length."""

    source: str
    rows: int
    metric: str  # "spearman" or "auc"
    model: float
    length: float
    spearman_model: float | None = None  # for `difficulty` labels, both metrics are given
    spearman_length: float | None = None

    def meets_target(self) -> bool | None:
        if self.source not in TARGETS:
            return None
        metric, minimum = TARGETS[self.source]
        value = self.model if metric == self.metric else self.spearman_model
        return value is not None and value >= minimum


def _figures(metric: str, scores: Sequence[float], rows: Sequence[DifficultyRow]) -> float:
    if metric == "auc" and rows[0].hard is not None:
        return auc(scores, [bool(r.hard) for r in rows])
    if metric == "auc":
        d = np.array([r.difficulty for r in rows], float)
        low, high = np.quantile(d, [1 / 3, 2 / 3])
        keep = (d <= low) | (d >= high)
        return auc(np.asarray(scores, float)[keep], d[keep] >= high)
    labels = [r.level if r.level is not None else r.difficulty for r in rows]
    return spearman(scores, [float(v) for v in labels if v is not None])


def family_reports(rows: Sequence[DifficultyRow], scores: Sequence[float]) -> list[FamilyReport]:
    """One report per source, in the order sources first appear."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.source, []).append(i)
    out = []
    for source, idx in groups.items():
        sub = [rows[i] for i in idx]
        if len({(r.level, r.difficulty, r.hard) for r in sub}) < 2:
            continue  # one label for the whole family (an anchor set): nothing to order
        s = [scores[i] for i in idx]
        length = [float(len(r.request.messages[-1].text())) for r in sub]
        if sub[0].level is not None:
            out.append(
                FamilyReport(
                    source,
                    len(sub),
                    "spearman",
                    _figures("sp", s, sub),
                    _figures("sp", length, sub),
                )
            )
        elif sub[0].hard is not None:
            out.append(
                FamilyReport(
                    source, len(sub), "auc", _figures("auc", s, sub), _figures("auc", length, sub)
                )
            )
        else:
            out.append(
                FamilyReport(
                    source,
                    len(sub),
                    "auc",
                    _figures("auc", s, sub),
                    _figures("auc", length, sub),
                    _figures("sp", s, sub),
                    _figures("sp", length, sub),
                )
            )
    return out


def print_family_reports(reports: Sequence[FamilyReport], file: Any = None) -> None:
    from rich.table import Table

    from router.offline.terminal import table_console

    table = Table(
        title="difficulty: does the score rise with known difficulty? (each family on its own)"
    )
    for column in ("family", "rows", "metric", "model", "length", "target"):
        table.add_column(column, justify="left" if column == "family" else "right", no_wrap=True)
    for r in reports:
        met = r.meets_target()
        target = "-"
        if r.source in TARGETS:
            metric, minimum = TARGETS[r.source]
            target = f"{metric} >= {minimum:g}: {'met' if met else 'MISSED'}"
        table.add_row(r.source, str(r.rows), r.metric, f"{r.model:.3f}", f"{r.length:.3f}", target)
        if r.spearman_model is not None and r.spearman_length is not None:
            table.add_row(
                "", "", "spearman", f"{r.spearman_model:.3f}", f"{r.spearman_length:.3f}", ""
            )
    table_console(file=file).print(table)
