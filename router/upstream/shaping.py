"""Shape one upstream call to the rules DeepSeek's API enforces. Pure: no I/O.

Applied once, where the pipeline builds an `UpstreamCall`, so the direct and the litellm
transports (and every front door) send the same DeepSeek-ready request:

- roles: DeepSeek accepts `system`, `user`, `assistant` and `tool` only and answers 400
  ("unknown variant `developer`") otherwise; `developer` turns are sent as `system`, and the
  legacy `function` role (no call id to answer) is refused here with a clear 400;
- output cap: DeepSeek reads `max_tokens` only and silently ignores `max_completion_tokens`,
  so the smaller of the two goes out as `max_tokens`;
- JSON output: `json_object` is the only structured mode and the prompt must say "json";
  `json_schema` becomes `json_object` plus a system line carrying the schema, and a
  `json_object` request whose prompt never says "json" gets a short system line saying it;
- images: only tiers marked `vision: true` may receive image parts; anything else is a 400
  naming the tier, never a silent drop (routing already steers image requests to such tiers);
- `user_id`: the caller's tenant hash (never a key), which DeepSeek uses to isolate its KV cache,
  content-safety handling and scheduling per end user; the client's free-form `user` is not sent.

Sources: api-docs.deepseek.com guides/json_mode, quick_start/rate_limit (user_id),
quick_start/pricing (vision on Flash only); the "unknown variant `developer`" reports of agent
projects (earendil-works/pi#1048, eclipse-theia/theia#15144).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from router.errors import InvalidRequest
from router.schemas import IMAGE_PARTS
from router.upstream.base import UpstreamCall

DEEPSEEK_PREFIX = "deepseek/"  # litellm's provider prefix for DeepSeek model ids
JSON_LINE = "Answer with a single JSON object."
SCHEMA_LINE = "Answer with a single JSON object that follows this JSON schema: "
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,512}$")  # DeepSeek's documented user_id alphabet
_MAX_SCHEMA_CHARS = 32_768  # a schema this large is refused rather than pasted into the prompt


def is_deepseek(model: str) -> bool:
    """Whether a tier's litellm model id names a DeepSeek model (the rules here apply)."""
    return model.startswith(DEEPSEEK_PREFIX)


def user_id_of(namespace: str | None) -> str | None:
    """The `user_id` DeepSeek receives for a caller's cache namespace ("key:<hash>" or
    "tenant:<hash>"): the same hash, spelled in DeepSeek's alphabet; None for no caller."""
    if not namespace or namespace == "anonymous":
        return None
    candidate = "flashpro-" + namespace.replace(":", "-")
    return candidate if _USER_ID.match(candidate) else None


def has_images(messages: Sequence[Any]) -> bool:
    """Whether any message carries an image part (dicts or parsed messages)."""
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else message.content
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else part.type
                if kind in IMAGE_PARTS:
                    return True
    return False


def shape(
    call: UpstreamCall, *, tier: str, vision: bool, user_id: str | None = None
) -> UpstreamCall:
    """The call as DeepSeek must receive it (see the module docstring); other providers'
    calls are returned unchanged. Raises InvalidRequest for what cannot be sent."""
    if not is_deepseek(call.model):
        return call
    messages = [_role(m, i) for i, m in enumerate(call.messages)]
    if not vision and has_images(messages):
        raise InvalidRequest(
            f"The request has image parts, and tier '{tier}' ({call.model}) does not accept "
            "images. Send it to a tier marked `vision: true` in the policy (DeepSeek's Flash "
            "models read images; Pro does not).",
            param="messages",
            code="images_not_supported",
        )
    _images_from_users_only(messages)
    params = dict(call.params)
    params.pop("user", None)
    _output_cap(params)
    messages = _json_output(params, messages)
    if user_id is not None:
        params["user_id"] = user_id
    return replace(call, messages=messages, params=params)  # deadlines and wire kept


def _role(message: dict[str, Any], index: int) -> dict[str, Any]:
    role = message.get("role")
    if role == "developer":
        return {**message, "role": "system"}
    if role == "function":
        raise InvalidRequest(
            f"messages[{index}] uses the legacy `function` role, which DeepSeek does not accept. "
            "Send a tool result as role `tool` with the `tool_call_id` it answers.",
            param=f"messages[{index}].role",
            code="unsupported_role",
        )
    return message


def _images_from_users_only(messages: Sequence[Mapping[str, Any]]) -> None:
    """DeepSeek reads images in user turns only; elsewhere they would be flattened to their
    text on the way (litellm does the same), so they are refused instead."""
    for index, message in enumerate(messages):
        if message.get("role") != "user" and has_images([message]):
            raise InvalidRequest(
                f"messages[{index}] ({message.get('role')}) has image parts; DeepSeek reads "
                "images in user messages only.",
                param=f"messages[{index}].content",
                code="images_not_supported",
            )


def _output_cap(params: dict[str, Any]) -> None:
    """`max_tokens` only: the smaller of the two caps when both are given."""
    newer = params.pop("max_completion_tokens", None)
    if newer is None:
        return
    older = params.get("max_tokens")
    params["max_tokens"] = newer if older is None else min(older, newer)


def _json_output(params: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fmt = params.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "json_schema":
        assert isinstance(fmt, Mapping)
        params["response_format"] = {"type": "json_object"}
        return _with_system_line(messages, _schema_line(fmt))
    if kind == "json_object" and not mentions_json(messages):
        return _with_system_line(messages, JSON_LINE)
    return messages


def _schema_line(fmt: Mapping[str, Any]) -> str:
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if schema is None:
        return JSON_LINE
    text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > _MAX_SCHEMA_CHARS:
        raise InvalidRequest(
            f"The response_format JSON schema is over {_MAX_SCHEMA_CHARS} characters; DeepSeek "
            "takes schemas only inside the prompt, so send a smaller one.",
            param="response_format",
        )
    return SCHEMA_LINE + text


def mentions_json(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the system or user prompt contains the word "json" (any case), as DeepSeek's
    JSON mode requires."""
    for message in messages:
        if message.get("role") in ("system", "user") and "json" in _text(message).lower():
            return True
    return False


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, Mapping))
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _with_system_line(messages: list[dict[str, Any]], line: str) -> list[dict[str, Any]]:
    """The line as a system message right after the leading system messages, so the system
    prompt's cached prefix is untouched."""
    at = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
    return [*messages[:at], {"role": "system", "content": line}, *messages[at:]]
