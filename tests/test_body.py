"""Request bodies parsed at the edge (router/http/body.py): JSON nesting is capped, exactly,
whatever the strings hold."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import InvalidRequest
from router.http.body import loads, nests_deeper

TRICKY = st.sampled_from(["[", "{", "]", "}", '"', "\\", '\\"', "\\\\", '"[{', '\\\\"', ""])
TEXT = st.lists(TRICKY | st.text(max_size=3), max_size=4).map("".join)
VALUES = st.recursive(
    st.none() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(value=VALUES, limit=st.integers(min_value=0, max_value=6), indent=st.booleans())
def test_the_depth_check_matches_the_parsed_depth(value: Any, limit: int, indent: bool) -> None:
    text = json.dumps(value, indent=1 if indent else None).encode()
    assert nests_deeper(text, limit) == (depth(value) > limit)


def test_brackets_inside_strings_do_not_count() -> None:
    inside = orjson.dumps({"messages": [{"content": "[" * 500 + '\\"{' * 100}]})
    assert not nests_deeper(inside, 3)
    assert loads(inside, 3)["messages"][0]["content"].startswith("[[[")


@pytest.mark.parametrize("levels", [65, 255, 1023, 5000])
def test_nesting_past_the_cap_is_a_400(levels: int) -> None:
    body = b'{"model": "flash", "tools": ' + b"[" * levels + b"]" * levels + b"}"
    with pytest.raises(InvalidRequest, match="levels deep") as caught:
        loads(body, 64)
    assert caught.value.status == 400 and caught.value.code == "json_too_deep"


def test_nesting_up_to_the_cap_is_accepted() -> None:
    body = b"[" * 64 + b"]" * 64
    assert depth(loads(body, 64)) == 64


def test_invalid_json_is_a_400_with_a_bounded_message() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON") as caught:
        loads(b'{"model": "' + b"x" * 100_000)
    assert len(caught.value.message) < 300
