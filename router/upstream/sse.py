"""Split the upstream's `text/event-stream` bytes into events, as the HTML standard's event
stream interpretation says. Pure: no I/O.

Lines end with CRLF, LF or a bare CR (a CR that ends one read ends its line, and a LF that
opens the next read is its pair, not an empty line); `data:` lines of one event are joined with LF; a line
starting with `:` is a comment (DeepSeek sends `: keep-alive` while a request is queued);
`event`, `id`, `retry` and unknown fields are read and ignored; an event without data is no
event; an event the stream ends in the middle of is dropped. The parsers of the HTTP clients
that have one (httpx-sse, the openai SDK's) drop comments and bound neither lines nor events;
this one hands comments on, so keep-alives reach streaming clients, and refuses a line or an
event over its cap (a hostile upstream cannot make it buffer without end).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES = 8 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class EventStreamError(ValueError):
    """The stream broke a cap (a line or an event too large)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event (`data` set) or one comment line (`comment` set)."""

    data: bytes | None = None
    comment: bytes | None = None


class EventDecoder:
    """Feed the body as it arrives; each call returns the events and comments completed by it."""

    __slots__ = ("_after_cr", "_buffer", "_data", "_max_event", "_max_line", "_size", "_started")

    def __init__(
        self, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        self._buffer = b""
        self._data: list[bytes] = []
        self._size = 0
        self._started = False
        self._after_cr = False  # the last read ended with a CR: a LF opening the next is its pair

    def feed(self, chunk: bytes) -> list[Event]:
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if chunk:
            self._after_cr = chunk[-1:] == b"\r"
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        if len(rest) > self._max_line:
            raise EventStreamError(f"an event stream line is over {self._max_line} bytes")
        self._buffer = rest
        events: list[Event] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":"
            return Event(comment=line[1:].removeprefix(b" "))
        name, colon, value = line.partition(b":")
        if name != b"data":
            return None  # event, id, retry: nothing flashpro needs; unknown fields: ignored
        if colon and value[:1] == b" ":
            value = value[1:]
        self._size += len(value) + 1
        if self._size > self._max_event:
            raise EventStreamError(f"an event is over {self._max_event} bytes")
        self._data.append(value)
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._size = 0
        return Event(data=data)
