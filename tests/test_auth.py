"""Client keys: an open proxy by default, 401 for unknown keys once the policy requires them, and
the upstream key never shown to anyone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.app import build_deps
from router.errors import Unauthorized
from router.routing.auth import authorize
from router.routing.callers import Caller, key_digest
from router.routing.policy import load_policy
from router.simulator.server import RunningSimulator
from tests.conftest import UPSTREAM_KEY, serve_app, settings_for
from tests.fault_policy import CLIENT_KEY, OTHER_KEY, write_policy

POLICY, _ = load_policy(None)
LOCKED = POLICY.model_copy(update={"auth": POLICY.auth.model_copy(update={"required": True})})


def test_the_default_policy_is_open() -> None:
    assert not POLICY.auth.required
    authorize(POLICY, Caller())
    authorize(POLICY, Caller(key=key_digest("anything")))


def test_a_locked_policy_needs_a_known_key() -> None:
    with pytest.raises(Unauthorized, match="Missing API key"):
        authorize(LOCKED, Caller())
    with pytest.raises(Unauthorized, match="not a flashpro client key"):
        authorize(LOCKED, Caller(key=key_digest("stranger")))
    authorize(LOCKED, Caller(key=key_digest(CLIENT_KEY), group="team"))


@pytest.fixture
def locked(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("FLASHPRO_TEST_CLIENT_KEY", OTHER_KEY)
    policy = write_policy(
        tmp_path,
        auth={"required": True},
        groups={"team": {}, "bots": {"forbidden_tiers": ["pro-max"]}},
        keys={key_digest(CLIENT_KEY): "team"},
        key_env={"FLASHPRO_TEST_CLIENT_KEY": "bots"},
    )
    settings = settings_for(simulator, policy=policy)
    with serve_app(settings, build_deps(settings)) as base:
        yield base


def ask(base: str, key: str | None, authorization: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    if authorization is not None:
        headers = {"authorization": authorization}
    body = {"model": "flash", "messages": [{"role": "user", "content": "hello"}]}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic Zm9vOmJhcg==", "Bearer fp-not-a-key", f"Bearer {UPSTREAM_KEY}"],
)
def test_unknown_keys_get_401_in_openai_format(
    locked: str, sim: RunningSimulator, authorization: str | None
) -> None:
    response = ask(locked, None, authorization)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert UPSTREAM_KEY not in response.text
    assert not sim.requests()  # refused before anything reached the upstream


def test_keys_from_the_policy_and_from_env_vars_are_let_in(locked: str) -> None:
    assert ask(locked, CLIENT_KEY).status_code == 200
    assert ask(locked, OTHER_KEY).status_code == 200


WRONG_UPSTREAM_KEY = "sk-wrong-upstream-key-9f8e7d6c5b4a"


@pytest.mark.parametrize("transport", ["direct", "litellm"])
def test_upstream_key_is_never_echoed_or_logged(
    simulator: RunningSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    transport: str,
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", WRONG_UPSTREAM_KEY)
    settings = settings_for(simulator, policy=write_policy(tmp_path), transport=transport)
    caplog.set_level(logging.DEBUG)
    with serve_app(settings, build_deps(settings)) as base:
        plain = ask(base, CLIENT_KEY)
        body = {"model": "flash", "messages": [{"role": "user", "content": "x"}], "stream": True}
        streamed = httpx.post(base + "/v1/chat/completions", json=body, timeout=10)
    for response in (plain, streamed):
        # the upstream refused flashpro's key: a 502 naming the proxy's key, not a 401 the
        # client would take for its own key
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_auth_failed" and "DEEPSEEK_API_KEY" in error["message"]
        assert WRONG_UPSTREAM_KEY not in response.text
        assert WRONG_UPSTREAM_KEY not in str(response.headers)
        assert WRONG_UPSTREAM_KEY[3:20] not in response.text
    assert WRONG_UPSTREAM_KEY not in caplog.text
    assert WRONG_UPSTREAM_KEY[3:20] not in caplog.text


def test_route_explanations_need_a_key_too(locked: str) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    assert httpx.post(locked + "/v1/route", json=body, timeout=10).status_code == 401
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    assert (
        httpx.post(locked + "/v1/route", json=body, headers=headers, timeout=10).status_code == 200
    )
