"""The decision log and POST /v1/feedback: feedback is joined to its decision, and `flashpro
train` fits a classifier on the joined log."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.cli import main
from router.observe.decisions import DecisionLog, DecisionLogLost, join, label_of
from router.observe.record import RequestRecord
from router.offline.evaluate import read_rows
from router.routing.callers import key_digest
from router.routing.decision import Decision
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from tests.conftest import ROOT, flashpro_process, wait_until
from tests.traffic import chat, observed_flashpro


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def test_feedback_appears_joined_to_its_decision_and_trains(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    asks = [("flash", True), ("flash", False), ("pro", True), ("pro", False)]
    with observed_flashpro(simulator, tmp_path) as (base, log), httpx.Client(base_url=base) as c:
        ids = []
        for i, (model, _) in enumerate(asks):
            response = c.post("/v1/chat/completions", json=chat(model, f"question {i} {base}"))
            ids.append(response.headers["x-flashpro-request-id"])
        # the decisions are flushed in the background (every 0.2 s under this policy)
        wait_until(lambda: log.exists() and len(read_log(log)) == len(ids), what="a flush")
        assert {line["id"] for line in read_log(log)} == set(ids)
        first = c.post("/v1/feedback", json={"request_id": ids[0], "good": True})
        assert first.status_code == 202
        assert first.json() == {"status": "recorded", "request_id": ids[0], "score": 1.0}
        for rid, (_, good) in zip(ids[1:], asks[1:], strict=True):
            assert c.post("/v1/feedback", json={"request_id": rid, "good": good}).status_code == 202
        assert c.post("/v1/feedback", json={"request_id": "unknown-id", "score": 0.5}).is_success
    lines = read_log(log)  # the feedback lines were flushed at shutdown
    decisions = {line["id"]: line for line in lines if "tier" in line}
    assert set(decisions) == set(ids)
    first_line = decisions[ids[0]]
    assert first_line["request"]["messages"][0]["content"].startswith("question 0")
    assert first_line["tier"] == "flash" and 0 <= first_line["score"] <= 1 and first_line["rule"]
    joined = {row["id"]: row for row in join(lines)}
    assert set(joined) == set(ids)  # rated decisions only; the stray rating is dropped
    assert [joined[rid]["label"] for rid in ids] == [0.0, 1.0, 1.0, 0.0]
    assert joined[ids[0]]["feedback"]["score"] == 1.0

    rows = read_rows(log)
    assert sorted(row.gain for row in rows) == [0.0, 0.0, 1.0, 1.0]
    assert {row.source for row in rows} == {"flash", "pro"}
    artifact = tmp_path / "retrained.npz"
    assert main(["train", "--data", str(log), "--out", str(artifact)]) == 0  # as the README says
    assert artifact.stat().st_size > 0


def test_feedback_for_a_buffered_decision_is_written_into_its_line(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl")
    decision = Decision("auto", "pro", "m", "enabled", "high", 0.8, "threshold:pro", "hard")
    log.decision(RequestRecord("r1", 200, decision, tier_rank=1, cost_usd=0.002))
    log.feedback("r1", 0.0)
    log.flush()
    (line,) = read_log(log.path)
    assert line["id"] == "r1" and line["tier"] == "pro" and line["label"] == 0.0
    assert line["feedback"] == {"score": 0.0, "strong_better": False, "weak_better": False}
    log.flush()  # nothing new: nothing written
    assert len(read_log(log.path)) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"good": True},
        {"request_id": "r1"},
        {"request_id": "r1", "good": "yes"},
        {"request_id": "r1", "score": 1.5},
        {"request_id": "r1", "good": True, "score": 1},
        ["r1"],
    ],
)
def test_invalid_feedback_is_a_400(flashpro: str, body: Any) -> None:
    response = httpx.post(flashpro + "/v1/feedback", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_feedback_without_a_decision_log_says_how_to_enable_it(flashpro: str) -> None:
    response = httpx.post(flashpro + "/v1/feedback", json={"request_id": "r1", "good": True})
    assert response.status_code == 400
    assert "observability.decision_log" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("rank", "score", "label"),
    [(0, 1.0, 0.0), (0, 0.0, 1.0), (1, 1.0, 1.0), (2, 0.0, 0.0), (0, 0.25, 0.75), (1, 7.0, 1.0)],
)
def test_label_is_the_gain_of_a_stronger_tier(rank: int, score: float, label: float) -> None:
    assert label_of(rank, score) == label


def test_join_keeps_other_formats_and_drops_unrated_decisions() -> None:
    routing = {"id": "m1", "prompt": "2+2?", "strong_correct": 1, "weak_correct": 1}
    labelled = {"id": "h1", "messages": [{"role": "user", "content": "x"}], "label": 1}
    decision = {"id": "d1", "tier": "flash", "tier_rank": 0, "request": {"messages": []}}
    unrated = {**decision, "id": "d2"}
    rating = {"id": "d1", "feedback": {"score": 0.0}}
    rows = list(join([routing, labelled, decision, unrated, rating]))
    assert rows[:2] == [routing, labelled]
    assert [row["id"] for row in rows[2:]] == ["d1"]
    assert rows[2]["label"] == 1.0 and rows[2]["feedback"]["strong_better"] is True


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def record(rid: str, key: str | None = None, tools: Any = None) -> RequestRecord:
    decision = Decision("auto", "flash", "m", "disabled", None, 0.2, "threshold", "easy")
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": rid}]}
    if tools is not None:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": tools}}]
    return RequestRecord(rid, 200, decision, request=ChatRequest.model_validate(body), key=key)


def test_a_line_that_cannot_be_encoded_is_dropped_and_counted(tmp_path: Path) -> None:
    drops: list[tuple[str, int]] = []
    log = DecisionLog(tmp_path / "d.jsonl", on_drop=lambda reason, n: drops.append((reason, n)))
    log.decision(record("before"))
    log.decision(record("bad", tools=deep(300)))  # past what orjson writes (254 levels)
    log.decision(record("after"))
    log.flush()
    assert [line["id"] for line in read_log(log.path)] == ["before", "after"]
    assert log.dropped == 1 and drops == [("unencodable", 1)]


async def test_the_flush_task_survives_a_bad_line_and_writes_later_ones(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl", flush_s=0.05)
    async with log.flushing():
        log.decision(record("bad", tools=deep(600)))
        await asyncio.sleep(0.2)  # a flush has run and dropped it
        log.decision(record("later"))
        await asyncio.sleep(0.2)
        assert [line["id"] for line in read_log(log.path)] == ["later"]
        log.decision(record("last"))
    assert [line["id"] for line in read_log(log.path)] == ["later", "last"]


async def test_a_last_write_that_fails_fails_the_shutdown(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    log = DecisionLog(tmp_path / "a-file" / "d.jsonl", flush_s=60)
    with pytest.raises(DecisionLogLost):
        async with log.flushing():
            log.decision(record("unwritable"))
    assert log.lost == 1


def test_feedback_is_kept_only_from_the_key_that_made_the_request(tmp_path: Path) -> None:
    owner, stranger = key_digest("fp-owner"), key_digest("fp-stranger")
    log = DecisionLog(tmp_path / "d.jsonl")
    log.decision(record("r1", key=owner))
    assert not log.feedback("r1", 1.0, stranger)
    assert not log.feedback("r1", 1.0, None)
    assert log.feedback("r1", 0.0, owner)
    log.flush()
    (line,) = read_log(log.path)
    assert line["key"] == owner[:16] and line["label"] == 1.0


def test_join_counts_a_rating_only_with_the_key_that_made_the_request() -> None:
    decision = {"id": "d1", "key": "aaaa", "tier": "flash", "tier_rank": 0, "request": {}}
    forged = {"id": "d1", "key": "bbbb", "feedback": {"score": 0.0}}
    assert list(join([decision, forged])) == []
    rightful = {"id": "d1", "key": "aaaa", "feedback": {"score": 0.0}}
    (row,) = join([decision, forged, rightful])
    assert row["label"] == 1.0


def test_a_serve_whose_decision_log_cannot_be_written_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    policy = tmp_path / "policy.yaml"
    data = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    unwritable = str(tmp_path / "a-file" / "d.jsonl")  # its line waits for the shutdown's write
    data["observability"] = {"decision_log": {"path": unwritable, "flush_seconds": 600}}
    policy.write_text(yaml.safe_dump(data))
    args = ["--simulate", "--simulate-speed", "0", "--policy", str(policy)]
    with flashpro_process(args, {"DEEPSEEK_API_KEY": ""}) as running:
        body = {"model": "flash", "messages": [{"role": "user", "content": "hello"}]}
        assert httpx.post(running.base + "/v1/chat/completions", json=body).status_code == 200
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=60) == 1


def test_two_callers_with_the_same_request_id_keep_their_own_decisions_and_ratings(
    tmp_path: Path,
) -> None:
    alice, bob = key_digest("fp-alice"), key_digest("fp-bob")
    log = DecisionLog(tmp_path / "d.jsonl")
    log.decision(record("same-id", key=alice))
    log.decision(record("same-id", key=bob))
    assert log.feedback("same-id", 1.0, alice) and log.feedback("same-id", 0.0, bob)
    assert not log.feedback("same-id", 1.0, key_digest("fp-carol"))
    log.flush()
    rows = list(join(read_log(log.path)))
    assert {row["key"]: row["label"] for row in rows} == {alice[:16]: 0.0, bob[:16]: 1.0}
