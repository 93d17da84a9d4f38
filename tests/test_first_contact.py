"""What a new user meets first on a running flashpro: the root URL, a wrong method, a repeated
question answered from the cache, and the metrics' series."""

from __future__ import annotations

import re
import uuid

import httpx
import openai


def test_root_says_what_runs_here(flashpro: str) -> None:
    response = httpx.get(flashpro + "/")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "flashpro"
    for path in ("/v1/chat/completions", "/v1/models", "/dashboard", "/metrics", "/readyz"):
        assert path in body["endpoints"].values()
        assert httpx.get(flashpro + path).status_code != 404 or path == "/v1/chat/completions"


def test_readyz_says_the_embedded_policy_and_shipped_classifier_are_live(flashpro: str) -> None:
    ready = httpx.get(flashpro + "/readyz").json()
    assert ready["policy_file"] is None
    assert re.fullmatch(r"shipped-[0-9a-f]{12}", ready["classifier_version"])
    assert ready["classifier_reload_error"] is None


def test_a_wrong_method_is_a_405_with_its_own_code(flashpro: str) -> None:
    for path, allowed in (("/v1/chat/completions", "POST"), ("/v1/route", "POST")):
        response = httpx.get(flashpro + path)
        assert response.status_code == 405
        assert allowed in response.headers["allow"]
        error = response.json()["error"]
        assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"
    assert httpx.get(flashpro + "/no/such/path").json()["error"]["code"] == "not_found"


def test_a_cache_hit_is_a_new_completion(flashpro: str) -> None:
    client = openai.OpenAI(base_url=flashpro + "/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": f"Name a colour ({uuid.uuid4().hex})"}]
    first = client.chat.completions.with_raw_response.create(
        model="flash", messages=question, temperature=0
    )
    again = client.chat.completions.with_raw_response.create(
        model="flash", messages=question, temperature=0
    )
    assert again.headers["x-flashpro-cache"] == "hit"
    original, replayed = first.parse(), again.parse()
    assert replayed.choices[0].message.content == original.choices[0].message.content
    assert replayed.id != original.id and replayed.id.startswith("chatcmpl-")
    stream = client.chat.completions.create(
        model="flash", messages=question, temperature=0, stream=True
    )
    ids = {chunk.id for chunk in stream}
    assert len(ids) == 1 and ids.isdisjoint({original.id, replayed.id})


def test_the_rule_label_names_the_rule_not_its_threshold(flashpro: str) -> None:
    for text in ("hi", "Prove that there are infinitely many primes, with care."):
        httpx.post(
            flashpro + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": text}]},
            timeout=60,
        )
    metrics = httpx.get(flashpro + "/metrics").text
    rules = set(re.findall(r'rule="([^"]*)"', metrics))
    assert any(rule.startswith("threshold") for rule in rules), rules
    assert not [rule for rule in rules if re.search(r"[<>=]|\d", rule)], rules
