"""Turn a whole chat request into a sparse feature vector for the difficulty classifier. Pure: no I/O.

Every part of the request contributes, each read through a bounded window so that cost does not
grow with the prompt: the head and tail of the last user message, the tail of the system prompt,
the tails of a few earlier turns, and a capped slice of the tool definitions. Words and word
bigrams are hashed (CRC-32, stable across processes) into `HASH_BUCKETS` buckets, namespaced by
where they came from; a handful of handcrafted dense features (lengths, turns, code, math
notation, multiple-choice layout, tools, JSON output) follow at `HASH_BUCKETS + j`.
No prompt text is kept: only bucket numbers leave this module.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

from router.schemas import ChatRequest, Message

FEATURES_VERSION = "hash-words-v1"
HASH_BITS = 20
HASH_BUCKETS = 1 << HASH_BITS
_MASK = HASH_BUCKETS - 1

USER_HEAD_CHARS = 3000
USER_TAIL_CHARS = 1000
SYSTEM_CHARS = 1000
HISTORY_TURNS = 4
HISTORY_CHARS = 400
TOOLS_CHARS = 1000
SIGNAL_CHARS = 2000  # window for the regex-counted dense features

_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
# Tokens of lower-cased, digit-zeroed UTF-8: words, numbers (as runs of 0), short runs of
# non-ASCII bytes (so CJK text still yields tokens), single punctuation marks.
_TOKEN = re.compile(rb"[a-z]+|0+|[\x80-\xff]{1,6}|[^\sa-z0\x80-\xff]")
_NUMBER = re.compile(rb"0+(?:[.,]0+)?")
_CHOICE = re.compile(rb"^[ \t]*\(?[A-Ha-h][.)]\s", re.MULTILINE)
_MATH_BYTES = b"=^<>+*/\\$"
_CODE_WORDS = frozenset((b"def", b"class", b"import", b"return", b"function", b"include", b"const"))
_PROOF_WORDS = frozenset(
    w.encode()
    for w in [
        "prove",
        "proof",
        "derive",
        "theorem",
        "lemma",
        "integral",
        "derivative",
        "equation",
        "algorithm",
        "complexity",
        "optimize",
        "optimise",
        "optimization",
        "implement",
        "debug",
        "refactor",
    ]
)
_MAX_TOOLS = 64

DENSE_NAMES: tuple[str, ...] = (
    "bias_one",
    "log_user_chars",
    "log_total_chars",
    "log_system_chars",
    "log_turns",
    "log_tools",
    "wants_json",
    "code_marks",
    "math_marks",
    "numbers",
    "choice_lines",
    "ends_with_answer",
    "question_marks",
    "proof_words",
    "newlines",
    "digit_share",
    "upper_share",
)
N_DENSE = len(DENSE_NAMES)
N_FEATURES = HASH_BUCKETS + N_DENSE


@dataclass(frozen=True, slots=True)
class Features:
    """Sparse features of one request plus the few signals the classifier reads directly."""

    indices: list[int]
    values: list[float]
    dense: tuple[float, ...]
    code_marks: int
    math_marks: int
    proof_words: int
    numbers: int
    prompt_chars: int


def bounded_text(message: Message, head: int, tail: int) -> str:
    """At most `head` leading and `tail` trailing characters of a message, never the whole of it."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        if len(content) <= head + tail:
            return content
        return content[:head] + "\n" + content[len(content) - tail :] if tail else content[:head]
    texts = [part.text for part in content if part.text]
    if not texts:
        return ""
    first, last = texts[0], texts[-1]
    if len(texts) == 1:
        return bounded_text(Message(role=message.role, content=first), head, tail)
    return first[:head] + "\n" + (last[len(last) - tail :] if tail else "")


def message_chars(message: Message) -> int:
    content = message.content
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return sum(len(part.text) for part in content if part.text)


def _tokens(text: str) -> list[bytes]:
    return _TOKEN.findall(text.lower().encode("utf-8", "ignore").translate(_ZERO_DIGITS))


def _hash_tokens(tokens: list[bytes], namespace: bytes, buckets: set[int], bigrams: bool) -> None:
    """Add the buckets of the tokens (and of their bigrams) to `buckets`."""
    seed = zlib.crc32(namespace)
    add = buckets.add
    crc32 = zlib.crc32
    prev = 0
    for token in tokens:
        h = crc32(token, seed)
        add(h & _MASK)
        if bigrams and prev:
            add(((prev * 0x9E3779B1) ^ h) & _MASK)
        prev = h


def _last_user_index(messages: list[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return len(messages) - 1


def extract(request: ChatRequest) -> Features:
    """Features of a request; cost is bounded by the window sizes, not by the prompt length."""
    messages = request.messages
    last = _last_user_index(messages)
    user = bounded_text(messages[last], USER_HEAD_CHARS, USER_TAIL_CHARS)
    buckets: set[int] = set()
    tokens = _tokens(user)
    _hash_tokens(tokens, b"u", buckets, bigrams=True)

    system_chars = 0
    history = messages[max(0, last - HISTORY_TURNS) : last]
    for message in messages[:last]:
        if message.role in ("system", "developer"):
            system_chars += message_chars(message)
            _hash_tokens(_tokens(bounded_text(message, 0, SYSTEM_CHARS)), b"s", buckets, False)
    for message in history:
        if message.role not in ("system", "developer"):
            _hash_tokens(_tokens(bounded_text(message, 0, HISTORY_CHARS)), b"h", buckets, False)
    n_tools = len(request.tools or ())
    if n_tools:
        tools = (request.tools or [])[:_MAX_TOOLS]
        names = " ".join(str(tool.get("function", tool))[:200] for tool in tools)
        _hash_tokens(_tokens(names[:TOOLS_CHARS]), b"t", buckets, bigrams=False)

    raw = user[:SIGNAL_CHARS].encode("utf-8", "ignore")
    window = max(len(raw), 1)
    zeroed = raw.translate(_ZERO_DIGITS)
    user_chars = message_chars(messages[last])
    total_chars = sum(message_chars(m) for m in messages)
    distinct = set(tokens)
    code = 3 * raw.count(b"```") + len(distinct & _CODE_WORDS) + raw.count(b";") // 2
    maths = len(raw) - len(raw.translate(None, _MATH_BYTES))
    proof = len(distinct & _PROOF_WORDS)
    numbers = len(_NUMBER.findall(zeroed))
    dense = (
        1.0,
        math.log1p(user_chars) / 8.0,
        math.log1p(total_chars) / 8.0,
        math.log1p(system_chars) / 8.0,
        math.log1p(len(messages) - 1),
        math.log1p(n_tools),
        1.0 if request.wants_json() else 0.0,
        math.log1p(code),
        math.log1p(maths),
        math.log1p(numbers),
        math.log1p(len(_CHOICE.findall(raw))),
        1.0 if raw.rstrip().endswith(b"Answer:") else 0.0,
        math.log1p(raw.count(b"?")),
        math.log1p(proof),
        math.log1p(raw.count(b"\n")),
        zeroed.count(b"0") / window,
        (len(raw) - len(raw.translate(None, _UPPER))) / window,
    )
    norm = 1.0 / math.sqrt(max(len(buckets), 1))
    indices = list(buckets)
    values = [norm] * len(indices)
    indices.extend(range(HASH_BUCKETS, HASH_BUCKETS + N_DENSE))
    values.extend(dense)
    return Features(indices, values, dense, code, maths, proof, numbers, total_chars)
