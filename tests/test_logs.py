"""Access logs: one JSON line per chat request, without prompt text unless the policy opts in."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from router.observe.logs import ACCESS_LOGGER, access_line, configure_access_log
from router.observe.record import RequestRecord, tenant_of
from router.routing.cost import Usage
from router.routing.decision import Decision
from router.routing.policy import Observability
from router.schemas import ChatRequest
from router.simulator.server import RunningSimulator
from tests.traffic import observed_flashpro, send_mix

DECISION = Decision("auto", "pro", "deepseek/deepseek-v4-pro", "enabled", "high", 0.7, "t", "why")


def test_one_line_per_request_without_prompt_text(
    simulator: RunningSimulator,
    upstream_env: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with observed_flashpro(simulator, tmp_path) as (base, _):
        sent = send_mix(base)
    messages = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    lines = [json.loads(message) for message in messages]
    assert len(lines) == len(sent.responses) == 13
    assert sorted(line["request_id"] for line in lines) == sorted(
        r.headers["x-flashpro-request-id"] for r in sent.responses
    )
    for prompt in sent.prompts:
        assert not any(prompt in message for message in messages)
    assert all("messages" not in line for line in lines)
    by_status = sorted(line["status"] for line in lines)
    assert by_status == [200] * 11 + [400, 404]
    ok = [line for line in lines if line["status"] == 200]
    for line in ok:
        assert line["tier"] in ("flash", "pro", "pro-max")
        assert line["rule"] and line["tenant"] == "anonymous"
        assert line["cache"] in ("hit", "miss", "bypass")
        assert line["latency_ms"] >= 0 and isinstance(line["score"], float)
    assert sum(line["cache"] == "hit" for line in ok) == 2
    streamed = [line for line in ok if line["stream"]]
    assert len(streamed) == 3 and all(line["ttft_ms"] is not None for line in streamed)
    assert all(line["completion_tokens"] > 0 and line["cost_usd"] > 0 for line in streamed)
    failed = next(line for line in lines if line["status"] == 404)
    assert failed["error"] == "model_not_found" and failed["tier"] is None


def _record(options: Observability) -> RequestRecord:
    request = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "my private question"}]}
    )
    return RequestRecord(
        "r1", 200, DECISION, options, usage=Usage(10, 20, 0, 5), cost_usd=0.01, request=request
    )


def test_prompts_are_logged_only_when_the_policy_opts_in() -> None:
    assert "messages" not in access_line(_record(Observability()))
    assert "my private question" not in json.dumps(access_line(_record(Observability())))
    line = access_line(_record(Observability(log_prompts=True)))
    assert line["messages"] == [{"role": "user", "content": "my private question"}]


def test_tenant_is_a_group_or_a_key_prefix() -> None:
    assert tenant_of("ab" * 32, "research") == "research"
    assert tenant_of("ab" * 32, None) == "key:abababababab"
    assert tenant_of(None, None) == "anonymous"


def test_configured_access_log_writes_bare_json_lines() -> None:
    out = io.StringIO()
    logger = configure_access_log(out)
    try:
        logger.info(json.dumps({"request_id": "x"}))
        configure_access_log(out)  # idempotent: still one handler
        logger.info(json.dumps({"request_id": "y"}))
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert [json.loads(line)["request_id"] for line in out.getvalue().split("\n") if line] == [
        "x",
        "y",
    ]
