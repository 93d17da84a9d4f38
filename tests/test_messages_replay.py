"""A recorded Claude-Code-style session (system prompt with tools, a dozen turns of tool_use and
tool_result, the small background calls beside them) replayed through flashpro with the
`anthropic` SDK: every call is answered, routed by the default policy over more than one tier."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import orjson

from router.simulator.server import RunningSimulator

SESSION = Path(__file__).parent / "data" / "claude_code_session.jsonl"


def recorded_requests() -> list[dict[str, Any]]:
    lines = SESSION.read_bytes().split(b"\n")
    return [orjson.loads(line) for line in lines if line.strip()]


def test_the_session_file_is_a_realistic_agent_session() -> None:
    requests = recorded_requests()
    assert len(requests) >= 12
    main = [r for r in requests if r.get("tools")]
    assert len({tool["name"] for tool in main[0]["tools"]}) >= 6
    longest = max(main, key=lambda r: len(r["messages"]))
    kinds = Counter(
        block["type"]
        for message in longest["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
    )
    assert kinds["tool_use"] >= 8 and kinds["tool_result"] >= 8 and kinds["thinking"] >= 1
    assert any(not r.get("tools") and "haiku" in r["model"] for r in requests)


def test_a_recorded_agent_session_is_routed_over_several_tiers(
    flashpro: str, sim: RunningSimulator
) -> None:
    api = anthropic.Anthropic(base_url=flashpro, api_key="fp-session-key", max_retries=0)
    tiers: list[tuple[str, str]] = []
    for request in recorded_requests():
        raw = api.messages.with_raw_response.create(**request)
        if request.get("stream"):
            events = list(raw.parse())
            assert events[0].type == "message_start" and events[-1].type == "message_stop"
        else:
            message = raw.parse()
            assert message.stop_reason in ("end_turn", "tool_use", "max_tokens")
            assert message.content
        tiers.append((request["model"], raw.headers["x-flashpro-tier"]))
    assert len({tier for _, tier in tiers}) >= 2, tiers
    background = [tier for model, tier in tiers if "haiku" in model]
    assert background and set(background) == {"flash"}, tiers
    assert "pro-max" not in {tier for _, tier in tiers}  # tool loops stay responsive
    upstream = [r for r in sim.requests() if r.path == "/anthropic/v1/messages"]
    assert len(upstream) == len(tiers)
    for sent, (_, tier) in zip(upstream, tiers, strict=True):
        assert sent.body is not None
        assert sent.body["thinking"]["type"] == ("disabled" if tier == "flash" else "enabled")
