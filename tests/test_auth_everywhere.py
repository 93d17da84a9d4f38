"""With `auth.required`, every endpoint but /healthz takes a key: the client endpoints a client
key, the monitoring ones a monitoring key (or a client key when the policy lists none); feedback
only from the key that made the request, and with a bounded body."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from router.app import build_deps
from router.cli import main
from router.routing.callers import bearer_digest, key_digest
from router.simulator.server import RunningSimulator
from tests.conftest import ROOT, serve_app, settings_for
from tests.fault_policy import CLIENT_KEY, OTHER_KEY, write_policy
from tests.test_dashboard import browse

MONITOR_KEY = "fp-monitoring-key-gamma"
ENV_MONITOR_KEY = "fp-monitoring-key-delta"
MONITORING = ["/metrics", "/v1/stats", "/readyz"]


def locked_policy(tmp_path: Path, **auth: object) -> Path:
    return write_policy(
        tmp_path,
        auth={"required": True, **auth},
        groups={"team": {}, "others": {}},
        keys={key_digest(CLIENT_KEY): "team", key_digest(OTHER_KEY): "others"},
        observability={"decision_log": {"path": str(tmp_path / "d.jsonl"), "flush_seconds": 0.2}},
    )


@pytest.fixture(scope="module")
def locked(
    simulator: RunningSimulator, upstream_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("locked")
    mp = pytest.MonkeyPatch()
    mp.setenv("FLASHPRO_TEST_MONITOR_KEY", ENV_MONITOR_KEY)
    policy = locked_policy(
        tmp_path,
        monitoring_keys=[key_digest(MONITOR_KEY)],
        monitoring_key_env=["FLASHPRO_TEST_MONITOR_KEY"],
    )
    settings = settings_for(simulator, policy=policy, policy_poll_seconds=0)
    with serve_app(settings, build_deps(settings)) as base:
        yield base
    mp.undo()


def bearer(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def ask(base: str, key: str | None, text: str = "hello") -> httpx.Response:
    body = {"model": "flash", "messages": [{"role": "user", "content": text}]}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=bearer(key), timeout=10)


def is_401(response: httpx.Response) -> bool:
    error = response.json().get("error", {})
    return response.status_code == 401 and error.get("type") == "authentication_error"


def test_only_healthz_is_open(locked: str) -> None:
    assert httpx.get(locked + "/healthz").status_code == 200
    for path in [*MONITORING, "/v1/models"]:
        assert is_401(httpx.get(locked + path)), path
    route = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert is_401(httpx.post(locked + "/v1/route", json=route))
    assert is_401(httpx.post(locked + "/v1/feedback", json={"request_id": "x", "good": True}))
    assert is_401(ask(locked, None))


def test_monitoring_endpoints_take_the_monitoring_keys_only(locked: str) -> None:
    for path in MONITORING:
        for key in (MONITOR_KEY, ENV_MONITOR_KEY):
            assert httpx.get(locked + path, headers=bearer(key)).status_code == 200, path
        assert is_401(httpx.get(locked + path, headers=bearer(CLIENT_KEY))), path
        assert is_401(httpx.get(locked + path, headers=bearer("fp-wrong"))), path


def test_client_endpoints_take_the_client_keys(locked: str) -> None:
    assert httpx.get(locked + "/v1/models", headers=bearer(CLIENT_KEY)).status_code == 200
    route = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(locked + "/v1/route", json=route, headers=bearer(CLIENT_KEY))
    assert answer.status_code == 200 and answer.json()["tier"]
    assert is_401(httpx.post(locked + "/v1/route", json=route, headers=bearer(MONITOR_KEY)))


def test_feedback_is_accepted_only_from_the_key_that_made_the_request(locked: str) -> None:
    rid = ask(locked, CLIENT_KEY, "feedback ownership").headers["x-flashpro-request-id"]
    rating = {"request_id": rid, "good": True}
    stranger = httpx.post(locked + "/v1/feedback", json=rating, headers=bearer(OTHER_KEY))
    assert stranger.status_code == 404 and rid not in stranger.text
    owner = httpx.post(locked + "/v1/feedback", json=rating, headers=bearer(CLIENT_KEY))
    assert owner.status_code == 202


def test_feedback_bodies_are_capped(locked: str) -> None:
    huge = b'{"request_id": "x", "good": true, "pad": "' + b"p" * 100_000 + b'"}'
    answer = httpx.post(locked + "/v1/feedback", content=huge, headers=bearer(CLIENT_KEY))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"


def test_prometheus_scrapes_with_a_bearer(locked: str) -> None:
    scrape = httpx.get(locked + "/metrics", headers=bearer(MONITOR_KEY))
    assert scrape.status_code == 200 and "flashpro_" in scrape.text


def test_without_monitoring_keys_the_client_keys_may_monitor(
    simulator: RunningSimulator, upstream_env: None, tmp_path: Path
) -> None:
    settings = settings_for(simulator, policy=locked_policy(tmp_path), policy_poll_seconds=0)
    with serve_app(settings, build_deps(settings)) as base:
        for path in MONITORING:
            assert httpx.get(base + path, headers=bearer(CLIENT_KEY)).status_code == 200
            assert is_401(httpx.get(base + path))


def test_the_dashboard_asks_for_a_key_and_draws_with_it(locked: str, tmp_path: Path) -> None:
    ask(locked, CLIENT_KEY, "a request for the dashboard")
    page = httpx.get(locked + "/dashboard")  # the page holds no data: its fetches need the key
    assert page.status_code == 200 and "Authorization" in page.text
    unkeyed = browse(
        locked + "/dashboard", tmp_path / "p0", "--virtual-time-budget=3000", "--dump-dom"
    )
    assert '<form id="key-form">' in unkeyed.stdout  # shown: no longer `hidden`
    assert 'data-rendered="' not in unkeyed.stdout
    keyed = browse(
        locked + f"/dashboard#key={MONITOR_KEY}",
        tmp_path / "p1",
        "--virtual-time-budget=3000",
        "--dump-dom",
    )
    assert re.search(r'data-rendered="[1-9]', keyed.stdout)
    assert MONITOR_KEY not in keyed.stdout  # the key leaves the address bar and the page


def test_the_documented_prometheus_authorization_is_a_bearer_block() -> None:
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    enabled = re.sub(
        r"^(\s+)# (authorization:|  type:|  credentials_file:)", r"\1\2", text, flags=re.M
    )
    config = yaml.safe_load(enabled)
    for job in config["scrape_configs"]:
        assert job["authorization"] == {
            "type": "Bearer",
            "credentials_file": "/etc/prometheus/flashpro-key",
        }


def test_unauthenticated_bearer_values_are_not_kept() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2000):  # 2,000 made-up 30 KB keys: 60 MB if anything kept them
            assert bearer_digest(f"Bearer {n:06d}" + "k" * 30_000) is not None
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000


def test_stats_command_sends_its_key(
    locked: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLASHPRO_KEY", raising=False)
    assert main(["stats", "--url", locked]) == 2
    assert "it needs a key: pass --key" in capsys.readouterr().err
    assert main(["stats", "--url", locked, "--key", "fp-wrong"]) == 2
    assert "this key may not read it" in capsys.readouterr().err
    monkeypatch.setenv("FLASHPRO_KEY", MONITOR_KEY)  # read when the command line is parsed
    assert main(["stats", "--url", locked]) == 0
    assert "per tier" in capsys.readouterr().out
