"""`flashpro learn`: refit on labels, promote only when better on held-out labels, roll back; and
every running flashpro process picking the promoted classifier up without a restart."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router.cli import main
from router.routing.classify import classifier_version, load_versioned
from router.routing.features import FEATURES_VERSION, extract
from router.schemas import ChatRequest
from tests.conftest import ROOT, RedisServer, flashpro_process, wait_until

LABELS_KEY = "flashpro:v1:learning:labels"
MODELS = "flashpro:v1:models"
SUBJECTS = [
    "the weather",
    "my cat",
    "a birthday party",
    "coffee",
    "a train ticket",
    "the garden",
    "a recipe for soup",
    "my bicycle",
    "a movie night",
    "the library",
    "a hiking trip",
    "my phone bill",
]
ASKS = ["Tell me about", "Give me tips on", "Write a short note about", "Help me plan"]
MARKER = "for the zephyrine council"  # a phrase the shipped classifier has never seen


def chat(text: str) -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}])


def labels(
    count: int,
    signal: bool,
    seed: int = 1,
    marker: str = MARKER,
    odds: tuple[float, float] = (0.85, 0.2),
) -> list[dict[str, Any]]:
    """Label records as the server's shadow comparisons write them. With `signal`, the strong
    tier wins with `odds[0]` on prompts with the marker and `odds[1]` elsewhere; without,
    verdicts are noise (the strong tier still wins a little more often than the weak one)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        marked = rng.random() < 0.4
        text = f"{rng.choice(ASKS)} {rng.choice(SUBJECTS)}"
        text += f" {marker}" if marked else ""
        text += f" ({rng.randint(1, 10**6)})"
        if signal:
            wins = odds[0] if marked else odds[1]
            verdicts = [1.0 if rng.random() < wins else rng.choice([0.0, 0.5]) for _ in "ab"]
        else:
            verdicts = [rng.choice([0.0, 0.5, 1.0, 1.0]) for _ in "ab"]
        features = extract(chat(text))
        records.append(
            {
                "v": 1,
                "id": f"req-{seed}-{i:05d}",
                "ts": 1764489600.0 + i,
                "alias": "auto",
                "classifier": "shipped",
                "score": 0.3,
                "served": "flash",
                "weak": "flash",
                "strong": "pro",
                "verdicts": verdicts,
                "gain": sum(verdicts) / 2,
                "agree": verdicts[0] == verdicts[1],
                "cost_usd": {"shadow": 0.0004, "judge": 0.0011},
                "features": {
                    "version": FEATURES_VERSION,
                    "buckets": features.buckets,
                    "bucket_value": features.bucket_value,
                    "dense": list(features.dense),
                },
            }
        )
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    return path


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def store_labels(url: str, records: list[Any]) -> None:
    client = redis.Redis.from_url(url)
    members = {
        (r if isinstance(r, str) else json.dumps(r)): float(i) for i, r in enumerate(records)
    }
    client.zadd(LABELS_KEY, members)


def learn(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["learn", *args])
    out, err = capsys.readouterr()
    return code, out, err


def live(url: str) -> str | None:
    value = redis.Redis.from_url(url).get(f"{MODELS}:live")
    return value.decode() if value else None


def test_too_few_labels_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", labels(40, signal=True))
    code, out, err = learn(capsys, "--labels", str(path), "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "40 usable labels" in err and "--min-labels 100" in err


def test_labels_with_a_learnable_signal_are_promoted_and_every_run_agrees(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_labels(redis_url, labels(1000, signal=True))
    code, out, _ = learn(capsys, "--redis-url", redis_url, "--dry-run", "--json")
    dry = json.loads(out)
    assert code == 0 and dry["decision"] == "dry-run" and live(redis_url) is None
    assert dry["candidate"]["apgr"] > dry["current"]["apgr"] + 0.1
    assert dry["candidate"]["auc"] > 0.8 > dry["current"]["auc"]
    assert dry["labels"]["heldout"] == dry["current"]["heldout_n"] > 100
    code, out, _ = learn(capsys, "--redis-url", redis_url, "--json")
    promoted = json.loads(out)
    assert code == 0 and promoted["decision"] == "promoted"
    assert promoted["candidate"]["version"] == dry["candidate"]["version"]  # deterministic
    assert live(redis_url) == promoted["candidate"]["version"]
    blob = redis.Redis.from_url(redis_url).get(f"{MODELS}:blob:{live(redis_url)}")
    assert blob is not None and classifier_version(blob, "learned") == live(redis_url)
    report = json.loads(redis.Redis.from_url(redis_url).get(f"{MODELS}:report:{live(redis_url)}"))
    assert report["previous"] == load_versioned()[1] and report["promoted_at"] > 0


def test_labels_of_noise_keep_the_current_classifier(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_labels(redis_url, labels(1000, signal=False))
    code, out, _ = learn(capsys, "--redis-url", redis_url)
    assert code == 0 and live(redis_url) is None
    assert out.splitlines()[-1].startswith(f"kept {load_versioned()[1]}")
    assert "APGR" in out and "candidate" in out and "rule: promote when" in out


def test_rollback_restores_the_previous_classifier(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = learn(capsys, "--redis-url", redis_url, "--rollback")
    assert code == 0 and out.startswith("nothing to roll back")
    first = write_jsonl(tmp_path / "a.jsonl", labels(1000, signal=True, seed=1))
    # then the strong tier turns out to lose on another long phrase: the first model is wrong
    other = labels(1000, signal=True, seed=2, marker="in the quorvath manner", odds=(0.1, 0.7))
    second = write_jsonl(tmp_path / "b.jsonl", other)
    assert learn(capsys, "--redis-url", redis_url, "--labels", str(first))[0] == 0
    one = live(redis_url)
    assert one is not None and one.startswith("learned-")
    assert learn(capsys, "--redis-url", redis_url, "--labels", str(second))[0] == 0
    two = live(redis_url)
    assert two is not None and two != one  # learned on top of the first
    code, out, _ = learn(capsys, "--redis-url", redis_url, "--rollback", "--json")
    assert json.loads(out) == {"decision": "rolled-back", "from": two, "live": one}
    assert live(redis_url) == one
    code, out, _ = learn(capsys, "--redis-url", redis_url, "--rollback")
    assert code == 0 and out.startswith(f"rolled back {one}; live: the classifier each")
    assert live(redis_url) is None


def test_a_second_learner_waits_for_the_first(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_labels(redis_url, labels(400, signal=True))
    redis.Redis.from_url(redis_url).set(f"{MODELS}:lock", "another", ex=60)
    code, _, err = learn(capsys, "--redis-url", redis_url)
    assert code == 2 and "another flashpro learn is promoting" in err
    assert learn(capsys, "--redis-url", redis_url, "--dry-run")[0] == 0  # evaluating is fine
    redis.Redis.from_url(redis_url).delete(f"{MODELS}:lock")
    assert learn(capsys, "--redis-url", redis_url)[0] == 0 and live(redis_url) is not None
    assert redis.Redis.from_url(redis_url).get(f"{MODELS}:lock") is None  # released


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--holdout", "1.5"], ["--min-labels", "-3"], ["--prior-strength", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["learn", *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad[0] in err


def test_unusable_labels_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = labels(300, signal=True)
    old = dict(records[0], id="old", features={"version": "hash-words-v1", "buckets": []})
    kept = dict(old, id="old-with-request")
    kept["request"] = {"messages": [{"role": "user", "content": "Tell me about coffee"}]}
    broken = dict(records[1], id="broken", gain=2.0)
    odd = dict(records[2], id="odd")
    odd["features"] = dict(odd["features"], buckets=[-1])
    path = write_jsonl(tmp_path / "l.jsonl", [*records, old, kept, broken, odd, records[3]])
    code, out, _ = learn(capsys, "--labels", str(path), "--dry-run", "--json")
    found = json.loads(out)["labels"]
    assert code == 0 and found["read"] == 305 and found["used"] == 301
    assert found["skipped"] == {"duplicate": 1, "features-version": 1, "malformed": 2}


def test_without_a_store_the_candidate_can_be_written_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", labels(400, signal=True))
    code, _, err = learn(capsys, "--labels", str(path))
    assert code == 2 and "nowhere to promote to" in err
    code, out, _ = learn(capsys, "--labels", str(path), "--out", str(tmp_path / "m.npz"), "--json")
    model, version = load_versioned(tmp_path / "m.npz")
    assert code == 0 and json.loads(out)["decision"] == "dry-run"
    assert version == "file-" + json.loads(out)["candidate"]["version"].partition("-")[2]
    marked = chat(f"Help me plan the garden {MARKER}")
    assert model.assess(marked).score > load_versioned()[0].assess(marked).score


def route(base: str, text: str) -> float:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    answer = httpx.post(base + "/v1/route", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return float(answer.json()["score"])


def ready(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(base + "/readyz", timeout=30).json()
    return body


def test_running_processes_pick_up_promotions_rollbacks_and_refuse_a_corrupt_blob(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = load_versioned()[1]
    env = {"REDIS_URL": redis_url, "FLASHPRO_POLICY_POLL_SECONDS": "0.2", "DEEPSEEK_API_KEY": ""}
    question = f"Help me plan a movie night {MARKER}"
    with ExitStack() as stack:
        bases = [
            stack.enter_context(flashpro_process(["--simulate"], env, "/readyz")).base
            for _ in range(2)
        ]
        assert all(ready(b)["classifier_version"] == shipped for b in bases)
        before = [route(b, question) for b in bases]
        path = write_jsonl(tmp_path / "l.jsonl", labels(1000, signal=True))
        assert learn(capsys, "--redis-url", redis_url, "--labels", str(path))[0] == 0
        learned = live(redis_url)
        assert learned is not None and learned != shipped
        for base in bases:
            wait_until(lambda b=base: ready(b)["classifier_version"] == learned, 30, "the swap")
        after = [route(b, question) for b in bases]
        assert after[0] == after[1] and after[0] > before[0] == before[1]
        model = httpx.get(bases[1] + "/v1/stats", timeout=30).json()["learning"]["model"]
        assert model["version"] == learned and model["previous"] == shipped
        assert model["apgr_after"] > model["apgr_before"] + 0.1 and model["heldout_n"] > 100
        assert main(["stats", "--url", bases[0]]) == 0
        shown = capsys.readouterr().out
        assert learned in shown and "promoted model, held-out APGR" in shown

        garbage = b"PK\x03\x04 not really an artifact"
        bad = classifier_version(garbage, "learned")
        client = redis.Redis.from_url(redis_url)
        client.set(f"{MODELS}:blob:{bad}", garbage)
        client.lpush(f"{MODELS}:history", bad)
        client.set(f"{MODELS}:live", bad)
        for base in bases:
            wait_until(
                lambda b=base: ready(b)["classifier_reload_error"] is not None, 30, "refusal"
            )
            assert ready(base)["classifier_version"] == learned
            assert route(base, question) == after[0]

        assert learn(capsys, "--redis-url", redis_url, "--rollback")[0] == 0  # pops the bad one
        assert learn(capsys, "--redis-url", redis_url, "--rollback")[0] == 0  # then the learned
        for base in bases:
            wait_until(lambda b=base: ready(b)["classifier_version"] == shipped, 30, "rollback")
            assert ready(base)["classifier_reload_error"] is None
            assert route(base, question) == before[0]


def test_serve_runs_learn_every_refit_period(redis_url: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    default = (ROOT / "policies" / "default.yaml").read_text("utf-8")
    policy.write_text(default + "\nlearning:\n  sample_rate: 0.0\n  refit_hours: 0.0005\n")
    store_labels(redis_url, labels(1000, signal=True))
    env = {"REDIS_URL": redis_url, "FLASHPRO_POLICY_POLL_SECONDS": "0.2", "DEEPSEEK_API_KEY": ""}
    args = ["--simulate", "--policy", str(policy), "--log-level", "info"]
    with flashpro_process(args, env, "/readyz") as running:
        wait_until(lambda: live(redis_url) is not None, 120, "a periodic run to promote")
        learned = live(redis_url)
        assert learned is not None and learned.startswith("learned-")
        wait_until(lambda: ready(running.base)["classifier_version"] == learned, 30, "the swap")
        wait_until(lambda: "flashpro learn: promoted" in running.output(), 30, "the log line")
