"""A scripted mix of traffic for the observability tests, and the policy they run under."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from router.app import build_deps
from router.simulator.server import RunningSimulator
from tests.conftest import ROOT, serve_app, settings_for


def observed_policy(directory: Path) -> tuple[Path, Path]:
    """The shipped policy plus a decision log and a total budget; returns (policy, log path)."""
    log = directory / "decisions.jsonl"
    data = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    data["observability"] = {
        "tenant_labels": False,
        "log_prompts": False,
        "decision_log": {"path": str(log), "flush_seconds": 0.2},
    }
    data["budgets"] = {"total": {"usd_per_day": 50, "usd_per_month": 1000}}
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, log


@contextmanager
def observed_flashpro(simulator: RunningSimulator, directory: Path) -> Iterator[tuple[str, Path]]:
    """flashpro in-process with production dependencies under `observed_policy`."""
    policy, log = observed_policy(directory)
    settings = settings_for(simulator, policy=policy, policy_poll_seconds=0)
    with serve_app(settings, build_deps(settings)) as base:
        yield base, log


@dataclass
class Sent:
    """What the mix sent and what came back."""

    responses: list[httpx.Response] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def count(self, status: int) -> int:
        return sum(r.status_code == status for r in self.responses)

    def headers(self, name: str) -> list[str]:
        return [r.headers[name] for r in self.responses if name in r.headers]


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def send_mix(base: str) -> Sent:
    """13 requests: 4 Flash misses, 2 Flash cache hits, 3 Pro streams, 2 auto, 2 errors."""
    sent = Sent()
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=base, timeout=30) as client:

        def post(body: Any, raw: bytes | None = None) -> None:
            if raw is not None:
                response = client.post("/v1/chat/completions", content=raw)
            else:
                response = client.post("/v1/chat/completions", json=body)
            sent.responses.append(response)

        for i in range(4):
            text = f"secret prompt number {i} about cats {tag}"
            sent.prompts.append(text)
            post(chat("flash", text, temperature=0))
        for _ in range(2):
            post(chat("flash", sent.prompts[0], temperature=0))  # the same request: a hit
        for i in range(3):
            text = f"secret streamed prompt {i} {tag}"
            sent.prompts.append(text)
            post(chat("pro", text, stream=True, stream_options={"include_usage": True}))
        for text in ("What is 2 + 2?", "Prove that there are infinitely many primes."):
            post(chat("auto", f"{text} {tag}"))
        post(chat("no-such-model", "hello"))
        post(None, raw=b"{not json")
    return sent
