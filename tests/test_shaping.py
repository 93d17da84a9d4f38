"""Request shaping toward DeepSeek: roles, output cap, JSON output, images, user_id. Pure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.errors import InvalidRequest
from router.schemas import ChatRequest
from router.upstream.base import UpstreamCall
from router.upstream.shaping import (
    JSON_LINE,
    SCHEMA_LINE,
    has_images,
    mentions_json,
    shape,
    user_id_of,
)

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def call(
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    model: str = "deepseek/deepseek-flash",
) -> UpstreamCall:
    return UpstreamCall(
        model=model,
        messages=messages,
        params=params or {},
        thinking="disabled",
        reasoning_effort=None,
        api_base=None,
        api_key=None,
        timeout_s=5.0,
    )


def shaped(
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    *,
    vision: bool = True,
    user_id: str | None = None,
    model: str = "deepseek/deepseek-flash",
) -> UpstreamCall:
    return shape(call(messages, params, model), tier="t", vision=vision, user_id=user_id)


def test_developer_turns_are_sent_as_system() -> None:
    out = shaped([{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    assert [m["role"] for m in out.messages] == ["system", "user"]
    assert out.messages[0]["content"] == "Be terse."


def test_function_role_is_refused_with_a_clear_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        shaped(
            [{"role": "user", "content": "hi"}, {"role": "function", "name": "f", "content": "1"}]
        )
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].role"
    assert "tool" in caught.value.message


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ({"max_completion_tokens": 50}, 50),
        ({"max_tokens": 80}, 80),
        ({"max_tokens": 80, "max_completion_tokens": 50}, 50),
        ({"max_tokens": 30, "max_completion_tokens": 50}, 30),
    ],
)
def test_output_cap_goes_out_as_max_tokens_only(given: dict[str, int], sent: int) -> None:
    out = shaped([{"role": "user", "content": "hi"}], given)
    assert out.params["max_tokens"] == sent
    assert "max_completion_tokens" not in out.params


def test_json_schema_becomes_json_object_with_the_schema_in_a_system_line() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    messages = [{"role": "system", "content": "You help."}, {"role": "user", "content": "Where?"}]
    out = shaped(messages, {"response_format": fmt})
    assert out.params["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in out.messages] == ["system", "system", "user"]
    line = out.messages[1]["content"]
    assert line.startswith(SCHEMA_LINE)
    assert orjson.loads(line.removeprefix(SCHEMA_LINE)) == schema
    assert mentions_json(out.messages)


def test_json_object_without_the_word_json_gets_a_system_line() -> None:
    out = shaped(
        [{"role": "user", "content": "List three cities."}],
        {"response_format": {"type": "json_object"}},
    )
    assert out.messages[0] == {"role": "system", "content": JSON_LINE}
    assert out.messages[1]["role"] == "user"


def test_json_object_whose_prompt_says_json_is_left_alone() -> None:
    messages = [{"role": "user", "content": "Reply in JSON: three cities."}]
    out = shaped(messages, {"response_format": {"type": "json_object"}})
    assert out.messages == messages


def test_the_word_json_in_an_assistant_turn_does_not_count() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "I speak json"},
        {"role": "user", "content": "again"},
    ]
    assert not mentions_json(messages)


def test_images_on_a_tier_without_vision_are_a_400_naming_the_tier() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
    assert has_images(messages)
    with pytest.raises(InvalidRequest) as caught:
        shape(call(messages, model="deepseek/deepseek-v4-pro"), tier="pro", vision=False)
    assert caught.value.status == 400
    assert "'pro'" in caught.value.message and caught.value.code == "images_not_supported"


def test_images_on_a_vision_tier_are_sent_untouched() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}]
    assert shaped(messages, vision=True).messages == messages


def test_user_id_is_the_tenant_hash_and_user_is_not_sent() -> None:
    out = shaped(
        [{"role": "user", "content": "hi"}],
        {"user": "alice@example.com"},
        user_id="flashpro-key-ab12",
    )
    assert out.params["user_id"] == "flashpro-key-ab12"
    assert "user" not in out.params


def test_user_id_of_a_namespace_uses_deepseeks_alphabet() -> None:
    assert user_id_of("key:0123abcd") == "flashpro-key-0123abcd"
    assert user_id_of("tenant:ffee") == "flashpro-tenant-ffee"
    assert user_id_of("anonymous") is None
    assert user_id_of(None) is None


def test_other_providers_are_not_shaped() -> None:
    messages = [{"role": "developer", "content": "x"}, {"role": "user", "content": [IMAGE]}]
    original = call(messages, {"max_completion_tokens": 5}, model="openai/gpt-4o")
    assert shape(original, tier="t", vision=False, user_id="u") is original


def test_the_output_limit_estimates_use_is_the_cap_deepseek_applies() -> None:
    def limit(**caps: int) -> int | None:
        return ChatRequest.model_validate(
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **caps}
        ).output_limit()

    assert limit() is None
    assert limit(max_tokens=80, max_completion_tokens=50) == 50
    assert limit(max_tokens=30, max_completion_tokens=50) == 30
    assert limit(max_completion_tokens=50) == 50


def test_images_outside_user_turns_are_refused_not_flattened() -> None:
    messages = [
        {"role": "user", "content": "Describe it."},
        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, IMAGE]},
        {"role": "user", "content": "And now?"},
    ]
    with pytest.raises(InvalidRequest) as caught:
        shaped(messages, vision=True)
    assert caught.value.param == "messages[1].content"
