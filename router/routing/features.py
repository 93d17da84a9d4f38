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
from itertools import repeat

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
# Tokens of lower-cased, digit-zeroed UTF-8: words, single punctuation marks, numbers (as runs
# of 0), short runs of non-ASCII bytes (so CJK text still yields tokens). The match swallows the
# blanks before its token (the group), so each search starts on a token instead of failing once
# per blank.
_TOKEN = re.compile(rb"\s*+([a-z]+|[^\sa-z0\x80-\xff]|0+|[\x80-\xff]{1,6})")
# Numbers such as 12, 3.5 or 1,000 once digits are zeroed. `00*` rather than `0+`: a pattern
# that opens with a literal byte lets the regex engine skip straight to the candidates.
_NUMBER = re.compile(rb"00*(?:[.,]00*)?")
# A multiple-choice line ("A. ...", "(b) ..."), found by the newline before it: the text is
# searched with a newline put in front, so the first line has one too. Starting from a literal
# byte is far cheaper than testing for a line start at every position. The blank after the
# letter is only looked at, as it may be the newline that opens the next line.
_CHOICE = re.compile(rb"\n[ \t]*\(?[A-Ha-h][.)](?=\s)")
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
_SIGNAL_WORDS = _CODE_WORDS | _PROOF_WORDS
_MAX_TOOLS = 64

# Namespaces seed the CRC, so one word read in the system prompt and in the user message lands
# in different buckets.
_USER = zlib.crc32(b"u")
_SYSTEM = zlib.crc32(b"s")
_HISTORY = zlib.crc32(b"h")
_TOOLS = zlib.crc32(b"t")
# A pair's bucket is ((h1 * 0x9E3779B1) ^ h2) & _MASK for the CRCs h1, h2 of its two words. Only
# the low HASH_BITS of each factor reach those bits, so the pair is computed from the words'
# buckets and a masked multiplier: small ints, on CPython's fast path.
_PAIR_MIX = 0x9E3779B1 & _MASK

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
_DENSE_INDICES = tuple(range(HASH_BUCKETS, N_FEATURES))


@dataclass(frozen=True, slots=True)
class Features:
    """Sparse features of one request plus the few signals the classifier reads directly.

    The hashed part is `buckets`, distinct, each worth `bucket_value` (1/sqrt of their number,
    so that it has unit norm whatever the prompt's length); `dense` follows at HASH_BUCKETS + j.
    """

    buckets: list[int]
    bucket_value: float
    dense: tuple[float, ...]
    code_marks: int
    math_marks: int
    proof_words: int
    numbers: int
    prompt_chars: int

    @property
    def indices(self) -> list[int]:
        """Every feature index: the buckets, then the dense features."""
        return [*self.buckets, *_DENSE_INDICES]

    @property
    def values(self) -> list[float]:
        """The value at each of `indices`."""
        return [self.bucket_value] * len(self.buckets) + list(self.dense)


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


def _add_words(tokens: list[bytes], namespace: int, buckets: set[int]) -> None:
    """Add the buckets of the tokens to `buckets`."""
    buckets.update([h & _MASK for h in map(zlib.crc32, tokens, repeat(namespace))])


def _add_words_and_pairs(tokens: list[bytes], namespace: int, buckets: set[int]) -> None:
    """Add the buckets of the tokens and of each pair of adjacent tokens to `buckets`.

    The first token pairs with a CRC of 0, which lands on its own bucket and so adds nothing
    (as does any pair after a word whose bucket is 0): the loop needs no special case.
    """
    add = buckets.add
    mask = _MASK
    mixed = 0  # the previous word's bucket times _PAIR_MIX, masked
    for h in map(zlib.crc32, tokens, repeat(namespace)):
        bucket = h & mask
        add(bucket)
        add(mixed ^ bucket)
        mixed = bucket * _PAIR_MIX & mask


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
    _add_words_and_pairs(tokens, _USER, buckets)

    system_chars = 0
    for message in messages[:last]:
        if message.role in ("system", "developer"):
            system_chars += message_chars(message)
            _add_words(_tokens(bounded_text(message, 0, SYSTEM_CHARS)), _SYSTEM, buckets)
    for message in messages[max(0, last - HISTORY_TURNS) : last]:
        if message.role not in ("system", "developer"):
            _add_words(_tokens(bounded_text(message, 0, HISTORY_CHARS)), _HISTORY, buckets)
    n_tools = len(request.tools or ())
    if n_tools:
        tools = (request.tools or [])[:_MAX_TOOLS]
        names = " ".join(str(tool.get("function", tool))[:200] for tool in tools)
        _add_words(_tokens(names[:TOOLS_CHARS]), _TOOLS, buckets)

    raw = user[:SIGNAL_CHARS].encode("utf-8", "ignore")
    window = max(len(raw), 1)
    zeroed = raw.translate(_ZERO_DIGITS)
    user_chars = message_chars(messages[last])
    total_chars = sum(map(message_chars, messages))
    signals = _SIGNAL_WORDS.intersection(tokens)
    code = 3 * raw.count(b"```") + len(signals & _CODE_WORDS) + raw.count(b";") // 2
    maths = len(raw) - len(raw.translate(None, _MATH_BYTES))
    proof = len(signals & _PROOF_WORDS)
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
        math.log1p(len(_CHOICE.findall(b"\n" + raw))),
        1.0 if raw.rstrip().endswith(b"Answer:") else 0.0,
        math.log1p(raw.count(b"?")),
        math.log1p(proof),
        math.log1p(raw.count(b"\n")),
        zeroed.count(b"0") / window,
        (len(raw) - len(raw.translate(None, _UPPER))) / window,
    )
    value = 1.0 / math.sqrt(max(len(buckets), 1))
    return Features(list(buckets), value, dense, code, maths, proof, numbers, total_chars)
