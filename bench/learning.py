"""How many judged labels `flashpro learn` needs: routing quality on a domain the shipped
classifier misreads, before and after learning from N labels. Offline, in one process plus the
`flashpro learn` command; deterministic.

The domain is the end-to-end learning test's (tests/learning_domain.py: support questions whose
hidden difficulty is decided by the product they name). Each label is made the way a running
flashpro makes it, from the simulator's own code: the simulated Flash and Pro answers to the
prompt (router/simulator/truth.py: good or poor by the hidden difficulty), the judge prompt
(router/routing/judge.py) judged twice, position-swapped, by the simulated judge (wrong with
`--judge-noise`), combined into the label record. `flashpro learn --labels FILE --dry-run --out`
refits and says whether it would promote; the candidate's APGR is then measured against the
truth on the domain's held-out prompts, beside the shipped classifier's and an oracle's (the
hidden difficulty itself).

    python bench/learning.py [--labels 100,250,500,1000] [--judge-noise 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from router.offline.evaluate import apgr, routing_curve  # noqa: E402
from router.routing.classify import DifficultyClassifier, load_classifier  # noqa: E402
from router.routing.judge import Compared, combine, judge_prompt, label_of  # noqa: E402
from router.schemas import ChatRequest  # noqa: E402
from router.simulator.text import parse_chat_request  # noqa: E402
from router.simulator.truth import GroundTruth, Verdict, answers  # noqa: E402
from tests.learning_domain import (  # noqa: E402
    expected_quality,
    fit_prompts,
    held_out_prompts,
    hidden_difficulty,
)

FLASH, PRO = "deepseek-flash", "deepseek-v4-pro"
ANSWER_CHARS = 20_000  # learning.max_answer_chars' default


def simulated_answer(truth: GroundTruth, model: str, text: str) -> str:
    request = parse_chat_request({"model": model, "messages": [{"role": "user", "content": text}]})
    (choice,) = answers(truth, request, thinking=False, max_output_tokens=400)
    return choice.content


def judged(truth: GroundTruth, prompt: str) -> Verdict:
    request = parse_chat_request({"model": PRO, "messages": [{"role": "user", "content": prompt}]})
    verdict = truth.judge(request)
    assert verdict is not None, "the judge prompt lost its answer tags"
    return verdict


def label(truth: GroundTruth, text: str, index: int) -> dict[str, Any]:
    """One label record, as a shadow comparison of `text` between Flash and Pro writes it."""
    request = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": text}]}
    )
    weak, strong = simulated_answer(truth, FLASH, text), simulated_answer(truth, PRO, text)
    first = judged(truth, judge_prompt(request, strong, weak, ANSWER_CHARS))
    second = judged(truth, judge_prompt(request, weak, strong, ANSWER_CHARS))
    compared = Compared(
        f"bench-{index}", 1.7e9 + index, "auto", "shipped", 0.5, "flash", "flash", "pro"
    )
    return label_of(compared, combine(first, second), {}, request, store_prompt=False)


def domain_apgr(classifier: DifficultyClassifier | None, prompts: list[str]) -> float:
    strong, weak = expected_quality(prompts)
    if classifier is None:  # the oracle
        scores = [hidden_difficulty(p) for p in prompts]
    else:
        scores = [
            classifier.assess(
                ChatRequest.model_validate(
                    {"model": "auto", "messages": [{"role": "user", "content": p}]}
                )
            ).score
            for p in prompts
        ]
    return apgr(routing_curve(scores, strong, weak))


def learn(labels: list[dict[str, Any]], directory: Path) -> tuple[dict[str, Any], Path, float]:
    """`flashpro learn --labels --dry-run --json --out`: its report, the candidate, seconds."""
    path, out = directory / f"labels-{len(labels)}.jsonl", directory / f"cand-{len(labels)}.npz"
    path.write_text("".join(json.dumps(row) + "\n" for row in labels))
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "learn",
            "--labels",
            str(path),
            "--dry-run",
            "--json",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout), out, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default="100,250,500,1000", help="label counts to try")
    parser.add_argument("--judge-noise", type=float, default=0.1)
    args = parser.parse_args()
    counts = [int(n) for n in args.labels.split(",")]
    truth = GroundTruth(hidden_difficulty, judge_noise=args.judge_noise)
    fit, held = fit_prompts(), held_out_prompts()
    shipped = load_classifier()
    before, oracle = domain_apgr(shipped, held), domain_apgr(None, held)
    rng = random.Random(0)
    pool = [label(truth, text, i) for i, text in enumerate(rng.sample(fit, max(counts)))]
    print(
        f"domain: {len(fit)} fit prompts, {len(held)} held out; judge noise {args.judge_noise}; "
        f"APGR shipped {before:.3f}, oracle {oracle:.3f}"
    )
    print(
        f"{'labels':>7} {'agree':>6} {'held-out labels APGR':>21} {'resamples':>10} "
        f"{'domain APGR':>12} {'rise':>7} {'learn s':>8}"
    )
    with tempfile.TemporaryDirectory() as directory:
        for n in counts:
            rows = pool[:n]
            report, candidate, seconds = learn(rows, Path(directory))
            after = domain_apgr(load_classifier(candidate), held)
            agree = sum(bool(r["agree"]) for r in rows) / n
            figures = f"{report['current']['apgr']:.3f} -> {report['candidate']['apgr']:.3f}"
            print(
                f"{n:>7} {agree:>6.2f} {figures:>21} {report['resamples_better']:>10.2f} "
                f"{after:>12.3f} {after - before:>+7.3f} {seconds:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
