"""The event-stream decoder against the HTML standard's rules: line endings, multi-line data,
comments, fields, empty events, caps; and the same events however the bytes are split."""

from __future__ import annotations

import pytest

from router.upstream.sse import Event, EventDecoder, EventStreamError


def decode(*parts: bytes) -> list[Event]:
    decoder = EventDecoder()
    return [event for part in parts for event in decoder.feed(part)]


def data(*payloads: bytes) -> list[Event]:
    return [Event(data=payload) for payload in payloads]


def test_data_lines_of_one_event_are_joined_with_a_line_feed() -> None:
    stream = b'data: {"a":\ndata: 1}\n\ndata: two\n\n'
    assert decode(stream) == data(b'{"a":\n1}', b"two")


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_a_line_ending(newline: bytes) -> None:
    stream = b"data: one" + newline + newline + b"data: two" + newline + newline
    assert decode(stream) == data(b"one", b"two")


def test_a_carriage_return_split_from_its_line_feed_is_one_line_ending() -> None:
    assert decode(b"data: one\r", b"\n\r", b"\ndata: two\r", b"\r") == data(b"one", b"two")


def test_a_bare_carriage_return_at_the_end_of_a_read_still_ends_the_line() -> None:
    assert decode(b"data: one\r", b"\rdata: two\r\r") == data(b"one", b"two")


def test_comments_are_handed_on_and_other_fields_ignored() -> None:
    stream = b": keep-alive\n\nevent: delta\nid: 7\nretry: 10\nfoo: bar\ndata:x\n\n:\n\n"
    assert decode(stream) == [Event(comment=b"keep-alive"), *data(b"x"), Event(comment=b"")]


def test_an_empty_data_field_is_an_event_with_empty_data() -> None:
    assert decode(b"data:\n\ndata\n\n") == data(b"", b"")


def test_an_event_without_data_is_no_event() -> None:
    assert decode(b"event: ping\n\n\n\nid: 3\n\n") == []


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert decode(b"data:  two spaces\n\n") == data(b" two spaces")


def test_an_event_the_stream_ends_in_is_not_dispatched() -> None:
    assert decode(b"data: whole\n\ndata: half") == data(b"whole")


def test_a_byte_order_mark_at_the_start_is_dropped_even_split() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: x\n\n") == data(b"x")


def test_the_same_events_whatever_the_reads() -> None:
    stream = b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\ndata: x\rdata: y\r\r\ndata: [DONE]\n\n'
    whole = decode(stream)
    assert whole == [Event(comment=b"keep-alive"), *data(b'{"a": 1}', b"x\ny", b"[DONE]")]
    for size in (1, 2, 3, 5, 7):
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert decode(*pieces) == whole, size


def test_a_line_or_an_event_over_its_cap_is_refused() -> None:
    with pytest.raises(EventStreamError, match="line"):
        EventDecoder(max_line_bytes=16).feed(b"data: " + b"x" * 32)
    decoder = EventDecoder(max_event_bytes=16)
    with pytest.raises(EventStreamError, match="event"):
        decoder.feed(b"data: 0123456789\ndata: 0123456789\n")
